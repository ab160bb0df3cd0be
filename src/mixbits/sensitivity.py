"""Hessian-trace sensitivity of a prepared model (Dong et al., HAWQ-V2/V3): the estimate itself.

For each unit (a layer, or a structure of a layer) and candidate b, the expected loss
increase of quantizing W to b bits is, to second order,

    omega_b = (tr(H) / n) * ||Q_b(W) - W||^2,

with tr(H) estimated by Hutchinson's method (``E_v[v^T H v]`` over Rademacher v, each
``H v`` one double backward) at the float weights, or by the empirical Fisher where the
model has no second derivative. Used by the ``hessian`` method
(:mod:`mixbits.methods.hessian`) and by the search's Hessian start (:mod:`mixbits.search`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .bitspace import BitSpace
from .quant import quantize_hard
from .targets import unwrap_compiled

__all__ = ["LossFn", "hutchinson_traces", "fisher_traces", "hessian_sensitivity", "sensitivity"]

LossFn = Callable[[Any, Any], torch.Tensor]  # loss_fn(outputs, targets) -> mean-reduced scalar

log = logging.getLogger(__name__)


def _reduce(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Sum of ``t``: over everything (a scalar), or over all dims but ``dim`` (one value per channel)."""
    if dim is None:
        return t.sum()
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).sum(dim=1)


def hutchinson_traces(model: nn.Module, params: Mapping[str, torch.Tensor], loader: Iterable, *,
                      batches: int = 4, samples: int = 8, loss_fn=F.cross_entropy,
                      generator: torch.Generator | None = None,
                      per_channel: Mapping[str, int] | None = None) -> dict[str, float | torch.Tensor]:
    """Hutchinson estimates of the trace of the loss Hessian with respect to each tensor.

    Args:
        model: the model; called on the batches as is (put it in eval mode first for fixed norms).
        params: {name: tensor with requires_grad} whose diagonal Hessian blocks are traced.
        loader: (inputs, targets) batches; the first ``batches`` are used.
        batches: number of batches averaged.
        samples: Rademacher vectors per batch.
        loss_fn: loss(outputs, targets), mean-reduced (any task: class labels, pixels, regression).
        generator: CPU generator of the Rademacher vectors (seeded by the caller).
        per_channel: {name: channel dimension} of tensors whose trace is wanted per output
            channel (the diagonal blocks of each channel's rows).

    Returns:
        {name: estimate of tr(H_name)}, the average of v^T H v over batches and vectors; a float,
        or a CPU float64 tensor (C,) of per-channel traces for the names in ``per_channel``.

    Raises:
        ValueError: the loader yields no batch, or batches/samples below 1.
    """
    if batches < 1 or samples < 1:
        raise ValueError(f"hessian: batches and samples must be >= 1, got {batches} and {samples}")
    names = list(params)
    tensors = [params[n] for n in names]
    dims = [(per_channel or {}).get(n) for n in names]
    sums: list = [0.0] * len(names)
    taken = _first_batches(loader, batches)
    for x, y in taken:
        loss = loss_fn(model(x), y)
        grads = torch.autograd.grad(loss, tensors, create_graph=True)
        for s in range(samples):
            vs = [(torch.randint(0, 2, t.shape, generator=generator) * 2 - 1).to(t) for t in tensors]
            hvs = torch.autograd.grad(grads, tensors, grad_outputs=vs, retain_graph=s < samples - 1)
            for i, (v, hv) in enumerate(zip(vs, hvs)):
                sums[i] = sums[i] + _reduce(v * hv, dims[i]).detach().double().cpu()
    return {n: (s / (len(taken) * samples)) if d is not None else float(s) / (len(taken) * samples)
            for n, s, d in zip(names, sums, dims)}


def _first_batches(loader: Iterable, batches: int) -> list:
    """The first ``batches`` batches of ``loader`` (fewer if it has fewer; an empty loader is an error)."""
    taken = []
    for batch in loader:
        if len(taken) >= batches:
            break
        taken.append(batch)
    if not taken:
        raise ValueError("hessian: the loader yielded no batch")
    return taken


def fisher_traces(model: nn.Module, params: Mapping[str, torch.Tensor], loader: Iterable, *, batches: int = 4,
                  loss_fn=F.cross_entropy, per_channel: Mapping[str, int] | None = None
                  ) -> dict[str, float | torch.Tensor]:
    """First-order stand-in for :func:`hutchinson_traces`: the trace of the empirical Fisher.

    ``tr(F) = E_x ||g(x)||^2`` over single-example gradients; approximated here with batch
    gradients scaled by the batch size (needs one backward per batch, no double backward).

    Returns:
        {name: estimate of tr(H_name)}, per channel for the names in ``per_channel`` (as
        :func:`hutchinson_traces`).
    """
    names = list(params)
    tensors = [params[n] for n in names]
    dims = [(per_channel or {}).get(n) for n in names]
    sums: list = [0.0 if d is None else torch.zeros(t.shape[d], dtype=torch.float64) for t, d in zip(tensors, dims)]
    taken = _first_batches(loader, batches)
    for x, y in taken:
        grads = torch.autograd.grad(loss_fn(model(x), y), tensors, allow_unused=True)
        n = len(y) if hasattr(y, "__len__") else 1
        for i, g in enumerate(grads):
            if g is not None:
                sums[i] = sums[i] + _reduce(g.pow(2), dims[i]).detach().double().cpu() * n
    return {n: (s / len(taken)) if d is not None else float(s) / len(taken) for n, s, d in zip(names, sums, dims)}


@torch.no_grad()
def hessian_sensitivity(space: BitSpace, weights: Mapping[str, torch.Tensor],
                        traces: Mapping[str, float | torch.Tensor]) -> dict[str, dict[int, float]]:
    """omega[unit][bits] = max(tr, 0) / n * ||Q_bits(W) - W||^2 (a negative estimate counts as 0).

    A unit is a layer (its trace a float), or one structure of a layer with structures (the
    layer's trace a per-channel tensor, summed over the structure's channels; n and the error
    are the structure's).
    """
    out = {}
    for layer in space.layers:
        w = weights[layer.name].detach()
        if not layer.grouped:
            mean_trace = max(float(traces[layer.name]), 0.0) / layer.num_weights
            out[layer.name] = {b: mean_trace * float((quantize_hard(w, b, layer.channel_dim) - w).pow(2).sum())
                               for b in layer.candidates}
            continue
        bounds = torch.tensor((0,) + layer.group_channels).cumsum(0).tolist()
        per = layer.num_weights // layer.num_channels
        tr = torch.as_tensor(traces[layer.name], dtype=torch.float64)  # (C,), or the layer's trace
        if tr.dim() == 0:  # one trace for the layer: every channel gets its share
            tr = tr.expand(layer.num_channels) / layer.num_channels
        errs = {b: _reduce((quantize_hard(w, b, layer.channel_dim) - w).pow(2), layer.channel_dim).double().cpu()
                for b in layer.candidates}  # (C,) each
        for g, u in enumerate(layer.unit_names):
            lo, hi = bounds[g], bounds[g + 1]
            mean_trace = max(float(tr[lo:hi].sum()), 0.0) / (per * (hi - lo))
            out[u] = {b: mean_trace * float(errs[b][lo:hi].sum()) for b in layer.candidates}
    return out


def sensitivity(model: nn.Module, space: BitSpace, loader: Iterable, *, seed: int = 0, batches: int = 4,
                samples: int = 8, structure_traces: str = "layer", loss_fn: LossFn | None = None
                ) -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """(omega {unit: {bits: sensitivity}}, traces {layer: Hessian trace, per channel for a layer with
    structures}) of a prepared model at its float weights.

    Args:
        model: the prepared model; it computes in float while the traces are estimated.
        space: its BitSpace (left unfixed afterwards).
        loader: batches for the estimate (never the test split).
        seed: seed of the Rademacher probes.
        batches, samples: batches used, probes per batch.
        structure_traces: ``"layer"``: every structure of a layer takes the layer's mean trace (less
            noisy; the structures still differ by their quantization errors); ``"structure"``: each
            structure's own trace.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean-reduced scalar, the loss whose Hessian is
            traced; default cross-entropy on integer class labels.

    Weights with ``requires_grad=False`` (a frozen backbone, the base weights of LoRA models) are
    traced too: gradients are enabled on them while the traces are estimated, and turned off again.
    """
    loss_fn = loss_fn or F.cross_entropy
    model = unwrap_compiled(model)  # compiled graphs have no double backward; the module computes the same
    weights = {layer.name: space.float_weight(layer.name) for layer in space.layers}
    frozen = [w for w in dict.fromkeys(weights.values()) if not w.requires_grad]
    per_channel = ({layer.name: layer.channel_dim for layer in space.layers if layer.grouped}
                   if structure_traces == "structure" else {})
    was_training = model.training
    space.fix_({layer.name: 32 for layer in space.layers})  # the float forward: Q_32 is the identity
    model.eval()
    for w in frozen:
        w.requires_grad_(True)
    try:
        g = torch.Generator().manual_seed(seed)
        # The fused attention kernels have no double backward; the math kernel has.
        with sdpa_kernel(SDPBackend.MATH):
            try:
                traces = hutchinson_traces(model, weights, loader, batches=batches, samples=samples, generator=g,
                                           per_channel=per_channel, loss_fn=loss_fn)
            except RuntimeError as exc:
                if not any(k in str(exc) for k in ("derivative", "double backward", "differentiate twice")):
                    raise
                log.warning("hessian: the model has no second derivative (%s); using the first-order "
                            "(empirical Fisher) estimate of the Hessian traces", str(exc).splitlines()[0][:120])
                traces = fisher_traces(model, weights, loader, batches=batches, per_channel=per_channel,
                                       loss_fn=loss_fn)
    finally:
        for w in frozen:
            w.requires_grad_(False)
        space.unfix_()
        model.train(was_training)
    negative = [n for n, t in traces.items() if float(torch.as_tensor(t).sum()) <= 0]
    if negative:
        log.warning("hessian: non-positive trace estimates for %s (counted as insensitive)", negative[:5])
    return hessian_sensitivity(space, weights, traces), traces
