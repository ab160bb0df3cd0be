"""``hardsearch``: the bitwidth relaxed to a softmax over candidates and learned by gradient, with a
hard forward on the frozen float weights.

The differentiable search of :mod:`mixbits.search` keeps the seed's idea (a continuous
relaxation of each layer's bitwidth, learned by gradient) but its forward is the mixture
``sum_k p_k Q_k(W)``, whose error is linear in p while the loss is about quadratic, and
its weights adapt to the mixture while the logits learn. Here:

- the weights stay frozen at the float ones (nothing but the logits changes: a
  post-training allocation);
- every forward is a real discrete assignment: each layer takes ONE candidate, drawn
  from the softmax of its priced logits (Gumbel-max), with the straight-through gradient
  of the softmax to the logits (:meth:`mixbits.mixture.Decision.sample`); every
  candidate's quantized weight is computed once (the weights do not move);
- the budget is the same exact price projection as the search's
  (:meth:`mixbits.bitspace.BitSpace.project_`): the expected size equals the budget;
- the logits start at the Hessian sensitivity in log space, ``a_lk = -init_scale *
  log(omega_lk)``, so neighbouring candidates start O(1) apart, not 0.003; a quadratic penalty
  ``prior * ||a - a0||^2`` keeps that prior from being overturned by a few noisy steps;
- plain SGD on the logits keeps the size of each layer's gradient, the sensitivity. Adam
  (beta1 0.9, eps 1e-3) and a score-function (REINFORCE, leave-one-out baseline) estimator
  were measured and removed: on LeNet-5 post-training at 28x both ended at the Hessian
  allocation (82.4% mean over 3 seeds) where straight-through SGD found 87.4%
  (``benchmarks/results/allocation_quality.md``, rows ``hardsearch_adam`` and
  ``hardsearch_reinforce``, commits fdfcbff and 8d3ed54);
- the learned logits are handed to the exact budget solver (:func:`mixbits.search.derive_bits`)
  at the start and at ``checkpoints`` points of the run; these and the Hessian allocation are
  the candidates, and the one with
  the lowest held-out loss (:class:`~mixbits.methods.scoring.HeldOutScorer`) is returned
  (``select=False``: the last one).

Options: ``steps`` (default 300), ``lr`` (SGD, default 1.0), ``prior`` (default 0.05), ``batch``
(images per step, default 128), ``images`` (the most training images read, default 2048;
bounded by the run's calibration), ``temperature_start``/``temperature_end`` (default 1.0
and 0.3), ``checkpoints`` (default 4), ``select`` (default True), ``init`` (``"hessian"``
or ``"uniform"``), ``init_scale`` (default 1.0).
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from ..search import derive_bits
from .base import Allocation, AllocationContext, method_options, register_method, require_layer_granularity
from .hessian import hessian_units
from .scoring import HeldOutScorer, gather_images, select_candidate

__all__ = ["hard_search"]

_DEFAULTS = {"steps": 300, "lr": 1.0, "prior": 0.05, "batch": 128, "images": 2048,
             "temperature_start": 1.0, "temperature_end": 0.3, "checkpoints": 4, "select": True, "init": "hessian",
             "init_scale": 1.0}


def _options(ctx: AllocationContext) -> dict:
    out = {**_DEFAULTS, **method_options(ctx, "hardsearch", set(_DEFAULTS))}
    if out["init"] not in ("hessian", "uniform"):
        raise ValueError(f"hardsearch: init must be 'hessian' or 'uniform', got {out['init']!r}")
    if int(out["steps"]) < 1 or int(out["batch"]) < 1 or int(out["images"]) < 1:
        raise ValueError("hardsearch: steps, batch and images must be >= 1")
    if ctx.calibration is not None:
        out["images"] = min(int(out["images"]), int(ctx.calibration))
    return out


def _start_logits(ctx: AllocationContext, init: str, scale: float
                  ) -> tuple[dict[str, torch.Tensor], dict[str, int] | None]:
    """({layer: a0 (K,)}, the Hessian allocation or None): the Hessian sensitivity in log space,
    ``-scale * log(omega + floor)``, or zeros.

    In log space the start spaces neighbouring candidates by the log-ratio of their estimated
    loss increases (O(1) logits), where ``-omega / max(omega)`` spaces them by 0.003-0.12 and one
    optimizer step overturns them; the price projection then turns the start into the Hessian
    allocation's relaxation.
    """
    space = ctx.space
    if init == "uniform":
        return {layer.name: torch.zeros(len(layer.candidates)) for layer in space.layers}, None
    hessian_bits, omega = hessian_units(ctx)
    floor = 1e-9 * (max((v for per in omega.values() for v in per.values()), default=0.0) or 1.0)
    return {layer.name: torch.tensor([-scale * math.log(omega[layer.name][b] + floor) for b in layer.candidates])
            for layer in space.layers}, hessian_bits


@register_method("hardsearch")
def hard_search(ctx: AllocationContext) -> Allocation:
    """Learn the logits on the frozen float weights with a hard Gumbel forward; derive exactly (module docstring)."""
    opts = _options(ctx)
    space, model, device = ctx.space, ctx.model, ctx.device
    require_layer_granularity(ctx, "hardsearch")
    t0 = time.perf_counter()
    model.to(device)
    space.to(device)
    a0, hessian_bits = _start_logits(ctx, opts["init"], float(opts["init_scale"]))
    x, y = gather_images(ctx.loaders["held_out"], int(opts["images"]), device)
    scorer = HeldOutScorer(model, space, [(x, y)], images=len(y), bn_images=min(512, len(y)), device=device,
                           loss_fn=ctx.loss_fn)
    space.unfix_()
    with torch.no_grad():
        for layer, d in space.items():
            d.logits.copy_(a0[layer.name].reshape(d.logits.shape).to(d.logits))
    start = {n: t.to(device) for n, t in a0.items()}
    logits = [d.logits for _, d in space.items()]
    lr = float(opts["lr"])
    opt = torch.optim.SGD(logits, lr=lr)
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    steps, batch = int(opts["steps"]), int(opts["batch"])
    marks = {max(1, round(steps * (i + 1) / int(opts["checkpoints"]))) for i in range(int(opts["checkpoints"]))}
    # the Hessian allocation itself (the log-space start derives another one), then the learned logits'
    candidates = ([ctx.space.cost.to_layers(hessian_bits)] if hessian_bits else []) + [derive_bits(space, ctx.budget_bits)]
    t_start, t_end = float(opts["temperature_start"]), float(opts["temperature_end"])
    gen = torch.Generator().manual_seed(ctx.seed)
    loss_fn = ctx.loss_fn or F.cross_entropy
    history = []
    try:
        space.set_gumbel_(True)
        for d in space.decision_list:
            d.hard = True
        model.train()  # BatchNorm normalises with each batch's statistics: those of the quantized weights
        space.train()
        for step in range(steps):
            space.set_temperature_(t_start * (t_end / t_start) ** (step / max(steps - 1, 1)))
            space.project_(ctx.budget_bits)
            idx = torch.randint(len(y), (min(batch, len(y)),), generator=gen).to(device)
            loss = loss_fn(model(x[idx]), y[idx])
            prior = sum(((d.logits - start[layer.name].reshape(d.logits.shape)) ** 2).sum()
                        for layer, d in space.items())
            opt.zero_grad(set_to_none=True)
            (loss + float(opts["prior"]) * prior).backward()
            opt.step()
            if (step + 1) % max(1, steps // 20) == 0:
                history.append({"step": step + 1, "loss": float(loss.detach())})
            if step + 1 in marks:
                for d in space.decision_list:
                    d.hard = False
                candidates.append(derive_bits(space, ctx.budget_bits))
                for d in space.decision_list:
                    d.hard = True
    finally:
        for d in space.decision_list:
            d.hard = False
        space.set_gumbel_(False)
        for p, was in frozen:
            p.requires_grad_(was)
    losses, pick = select_candidate(scorer, candidates, bool(opts["select"]))
    space.unfix_()
    bits = candidates[pick]
    return Allocation(bits=bits, history=history,
                      info={"picked": pick, "candidate_losses": losses, "start_bits": candidates[0],
                            "seconds": time.perf_counter() - t0, **scorer.info()})
