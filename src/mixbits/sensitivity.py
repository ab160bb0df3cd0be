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

import contextlib
import logging
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .bitspace import BitSpace
from .quant import quantize_hard
from .targets import unwrap_compiled

__all__ = ["LossFn", "PerExampleError", "hutchinson_traces", "fisher_traces", "hessian_sensitivity", "sensitivity"]

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


class PerExampleError(ValueError):
    """The batches cannot be split into examples (no common example dimension, or a model that
    fails on a batch of one): the Fisher estimate is not available for them."""


_CHUNK_BYTES = 1 << 28  # bound on the per-example gradients held at once (256 MiB of float32)


def _tree_map(fn: Callable, tree: Any) -> Any:
    """``fn`` applied to every leaf of nested tuples, lists and dicts."""
    if isinstance(tree, (tuple, list)):
        return type(tree)(_tree_map(fn, t) for t in tree)
    if isinstance(tree, dict):
        return {k: _tree_map(fn, v) for k, v in tree.items()}
    return fn(tree)


def _leaves(tree: Any) -> list:
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in _leaves(t)]
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in _leaves(v)]
    return [tree]


def _batch_size(tree: Any) -> int | None:
    """The leading dimension shared by every tensor in ``tree`` (inputs or targets), or None."""
    sizes = {t.shape[0] for t in _leaves(tree) if isinstance(t, torch.Tensor) and t.dim() > 0}
    return sizes.pop() if len(sizes) == 1 else None


def _rows(tree: Any, lo: int, hi: int) -> Any:
    """Rows ``lo:hi`` of every batched tensor in ``tree``; other leaves as they are."""
    return _tree_map(lambda t: t[lo:hi] if isinstance(t, torch.Tensor) and t.dim() > 0 else t, tree)


def _state_names(model: nn.Module, tensors: list[torch.Tensor]) -> list[str] | None:
    """The names under which ``model`` holds each tensor (for ``functional_call``), or None if one is not its own."""
    owned = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers()):
        owned.setdefault(id(t), name)
    names = [owned.get(id(t)) for t in tensors]
    return None if any(n is None for n in names) else names


@contextlib.contextmanager
def _restoring(model: nn.Module):
    """Put every submodule's own parameters and buffers back afterwards: ``functional_call`` on a module
    registered under two names (``self.again = self.shared``) can leave a transformed tensor in its place."""
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    try:
        yield
    finally:
        for m, params, buffers in saved:
            m._parameters.update(params)
            m._buffers.update(buffers)


def _per_example_vmap(model, tensors, keys, x, y, loss_fn, dims, chunk):
    """Sum over the examples of (x, y) of each tensor's squared per-example gradient, with ``torch.func``.

    A tensor listed twice (tied weights) is one input of the transform and gets its whole gradient.
    """
    from torch.func import functional_call, grad, vmap

    first: dict[int, int] = {}
    for i, t in enumerate(tensors):
        first.setdefault(id(t), i)
    uniq = list(first.values())
    where = [uniq.index(first[id(t)]) for t in tensors]

    def batched(tree):
        return _tree_map(lambda t: 0 if isinstance(t, torch.Tensor) and t.dim() > 0 else None, tree)

    def ones(tree):  # every example a batch of one: (n, ...) -> (n, 1, ...), vmapped over dim 0
        return _tree_map(lambda t: t.unsqueeze(1) if isinstance(t, torch.Tensor) and t.dim() > 0 else t, tree)

    dims_in = (batched(x), batched(y))

    def example_loss(ws, xb, yb):
        return loss_fn(functional_call(model, {keys[i]: w for i, w in zip(uniq, ws)}, (xb,), strict=False), yb)

    per_grad = vmap(grad(example_loss), in_dims=(None,) + dims_in)
    n = _batch_size(x)
    sums = [0.0] * len(tensors)
    for lo in range(0, n, chunk):
        with _restoring(model):
            gs = per_grad([tensors[i].detach() for i in uniq], ones(_rows(x, lo, lo + chunk)),
                          ones(_rows(y, lo, lo + chunk)))
        for i, d in enumerate(dims):
            sq = gs[where[i]].pow(2).sum(0)  # summed over the chunk's examples
            sums[i] = sums[i] + _reduce(sq, d).detach().double().cpu()
    return sums


def _per_example_loop(model, tensors, x, y, loss_fn, dims):
    """As :func:`_per_example_vmap`, one backward per example (for models ``torch.func`` cannot transform)."""
    sums = [0.0] * len(tensors)
    for i in range(_batch_size(x)):
        try:
            loss = loss_fn(model(_rows(x, i, i + 1)), _rows(y, i, i + 1))
        except Exception as exc:  # noqa: BLE001 - the whole batch ran; one example alone did not
            raise PerExampleError(f"the model or loss fails on one example ({str(exc).splitlines()[0][:160]})") from exc
        grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        for k, g in enumerate(grads):
            if g is not None:
                sums[k] = sums[k] + _reduce(g.pow(2), dims[k]).detach().double().cpu()
    return sums


def fisher_traces(model: nn.Module, params: Mapping[str, torch.Tensor], loader: Iterable, *, batches: int = 4,
                  loss_fn=F.cross_entropy, per_channel: Mapping[str, int] | None = None
                  ) -> dict[str, float | torch.Tensor]:
    """Trace of the empirical Fisher of each tensor: the mean over examples of ``||g_i||^2``.

    ``g_i`` is the gradient of one example's loss (``loss_fn`` on that example alone, as a batch
    of one). The per-example gradients come from ``torch.func`` (``vmap`` of ``grad``, in chunks
    that hold at most 256 MiB of gradients); a model ``torch.func`` cannot transform gets one
    backward per example instead, with the same result. No random probes: the estimate varies only
    with the examples (compare :func:`hutchinson_traces`, whose Rademacher noise on ResNet-20 is
    several times the trace of its classifier).

    Args:
        model: the model; called as is (put it in eval mode first for fixed norms).
        params: {name: tensor} whose traces are wanted (their ``requires_grad`` is not needed for the
            ``torch.func`` path; the per-example loop needs it).
        loader: (inputs, targets) batches; the first ``batches`` are used. Inputs and targets are
            tensors, or nested tuples/lists/dicts of tensors, with the examples on dim 0.
        batches: number of batches.
        loss_fn: loss(outputs, targets), mean-reduced.
        per_channel: {name: channel dimension} of tensors whose trace is wanted per output channel.

    Returns:
        {name: trace}, a float, or a CPU float64 tensor (C,) per channel for the names in ``per_channel``.

    Raises:
        ValueError: the loader yields no batch.
        PerExampleError: a batch whose inputs have no common example dimension, targets with another
            example dimension than the inputs (flattened per-token targets), or a model or loss that
            fails on a batch of one.
    """
    names = list(params)
    tensors = [params[n] for n in names]
    dims = [(per_channel or {}).get(n) for n in names]
    keys = _state_names(model, tensors)
    numel = sum(t.numel() for t in dict((id(t), t) for t in tensors).values())
    chunk = max(1, _CHUNK_BYTES // (4 * max(numel, 1)))
    sums: list = [0.0] * len(names)
    count = 0
    use_vmap = keys is not None
    for x, y in _first_batches(loader, batches):
        n, ny = _batch_size(x), _batch_size(y)
        if n is None or ny not in (None, n):
            raise PerExampleError(f"per-example gradients need inputs and targets with one example dimension (dim 0), "
                                  f"got {n} input and {ny} target rows")
        part = None
        if use_vmap:
            try:
                part = _per_example_vmap(model, tensors, keys, x, y, loss_fn, dims, chunk)
            except Exception as exc:  # noqa: BLE001 - any transform failure: the per-example loop computes the same
                log.info("hessian: torch.func cannot transform this model (%s); one backward per example",
                         str(exc).splitlines()[0][:120])
                use_vmap = False
        if part is None:
            part = _per_example_loop(model, tensors, x, y, loss_fn, dims)
        sums = [s + p for s, p in zip(sums, part)]
        count += n
    return {nm: (s / count) if d is not None else float(s) / count for nm, s, d in zip(names, sums, dims)}


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
                samples: int = 8, structure_traces: str = "layer", loss_fn: LossFn | None = None,
                estimator: str = "fisher") -> tuple[dict[str, dict[int, float]], dict[str, float]]:
    """(omega {unit: {bits: sensitivity}}, traces {layer: curvature trace, per channel for a layer with
    structures}) of a prepared model at its float weights.

    Args:
        model: the prepared model; it computes in float while the traces are estimated.
        space: its BitSpace (left unfixed afterwards).
        loader: batches for the estimate (never the test split).
        seed: seed of the Rademacher probes (``estimator="hutchinson"``).
        batches: batches used.
        samples: Rademacher probes per batch (``estimator="hutchinson"``).
        structure_traces: ``"layer"``: every structure of a layer takes the layer's mean trace (less
            noisy; the structures still differ by their quantization errors); ``"structure"``: each
            structure's own trace.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean-reduced scalar, the loss whose curvature is
            traced; default cross-entropy on integer class labels.
        estimator: ``"fisher"`` (default): the trace of the empirical Fisher from per-example
            gradients (:func:`fisher_traces`), no random probes; ``"hutchinson"``: the Hessian's own
            trace from Rademacher probes (:func:`hutchinson_traces`), HAWQ's estimate, which falls
            back to the Fisher where the model has no second derivative. On ResNet-20 / CIFAR-10 the
            Fisher trace took 2-4 s where Hutchinson's 32 probes took 20-70 s, and its 28x allocation
            kept 68% accuracy before fine-tuning in every seed where Hutchinson's lost 12 points in one
            (it under-estimated the classifier's trace and binarised it).

    Weights with ``requires_grad=False`` (a frozen backbone, the base weights of LoRA models) are
    traced too: gradients are enabled on them while the traces are estimated, and turned off again.

    Raises:
        ValueError: an unknown ``estimator``.
    """
    if estimator not in ("fisher", "hutchinson"):
        raise ValueError(f"hessian: estimator must be 'fisher' or 'hutchinson', got {estimator!r}")
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
        # The fused attention kernels have no double backward (and no batching rule for every shape);
        # the math kernel has both.
        with sdpa_kernel(SDPBackend.MATH):
            traces = None
            if estimator == "hutchinson":
                g = torch.Generator().manual_seed(seed)
                try:
                    traces = hutchinson_traces(model, weights, loader, batches=batches, samples=samples, generator=g,
                                               per_channel=per_channel, loss_fn=loss_fn)
                except RuntimeError as exc:
                    if not any(k in str(exc) for k in ("derivative", "double backward", "differentiate twice")):
                        raise
                    log.warning("hessian: the model has no second derivative (%s); using the first-order "
                                "(empirical Fisher) estimate of the traces", str(exc).splitlines()[0][:120])
            if traces is None:
                try:
                    traces = fisher_traces(model, weights, loader, batches=batches, per_channel=per_channel,
                                           loss_fn=loss_fn)
                except PerExampleError as exc:
                    if estimator == "hutchinson":
                        raise  # neither estimate applies: the model has no double backward either
                    log.warning("hessian: %s; using Hutchinson's estimate of the Hessian trace instead", exc)
                    traces = hutchinson_traces(model, weights, loader, batches=batches, samples=samples,
                                               generator=torch.Generator().manual_seed(seed),
                                               per_channel=per_channel, loss_fn=loss_fn)
    finally:
        for w in frozen:
            w.requires_grad_(False)
        space.unfix_()
        model.train(was_training)
    negative = [n for n, t in traces.items() if float(torch.as_tensor(t).sum()) <= 0]
    if negative:
        log.warning("hessian: non-positive trace estimates for %s (counted as insensitive)", negative[:5])
    return hessian_sensitivity(space, weights, traces), traces
