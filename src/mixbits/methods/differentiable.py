"""``search``: the differentiable search of :mod:`mixbits.search` (the default method).

Options (``ctx.options``, ``--method-option`` in a sweep): any :class:`SearchConfig` field, and
``init``: ``"hessian"`` (the default: logits start at ``-kappa * omega / max(omega)`` with
omega the HAWQ-style sensitivity of :mod:`.hessian`, estimated on a few held-out batches, so
the search starts from the Lagrangian relaxation of the Hessian allocation and refines it on
the held-out data) or ``"uniform"`` (all logits 0); ``init_scale`` is kappa (default 10).
On the quick ResNet-20 benchmark the Hessian start moved the search from 55.93 to 58.03% at
24x (benchmarks/results/compare_methods.md).
"""

from __future__ import annotations

import torch

from ..search import SearchConfig, search
from .base import Allocation, AllocationContext, register_method
from .hessian import layer_sensitivity

_INIT = ("uniform", "hessian")


def _init_from_hessian(ctx: AllocationContext, scale: float) -> dict:
    omega, traces = layer_sensitivity(ctx, {})
    top = max((v for per in omega.values() for v in per.values()), default=0.0) or 1.0
    with torch.no_grad():
        for layer, d in ctx.space.items():
            d.logits.copy_(torch.tensor([-scale * omega[layer.name][b] / top for b in layer.candidates]))
    return {"init": "hessian", "traces": traces}


@register_method("search")
def differentiable_search(ctx: AllocationContext) -> Allocation:
    """Learn the bits with the weights on the held-out split (see :func:`mixbits.search`)."""
    options = dict(ctx.options)
    init = options.pop("init", "hessian")
    init_scale = float(options.pop("init_scale", 10.0))
    if init not in _INIT:
        raise ValueError(f"search: unknown init {init!r}; known: {', '.join(_INIT)}")
    config = SearchConfig(target=ctx.target, epochs=ctx.epochs,
                          distill_weight=0.5 if ctx.teacher is not None else 0.0, **options)
    info: dict = {"init": init}
    if init == "hessian" and ctx.resume is None:  # a resumed search restores its logits
        info = _init_from_hessian(ctx, init_scale)
    result = search(ctx.model, ctx.space, ctx.loaders["weights"], ctx.loaders["held_out"], config,
                    device=ctx.device, teacher=ctx.teacher, progress=ctx.progress,
                    resume=ctx.resume, on_checkpoint=ctx.on_checkpoint)
    return Allocation(bits=result.bits, history=result.history, info={**info, "multiplier": result.multiplier})
