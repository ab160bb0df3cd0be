"""``search``: the differentiable search of :mod:`mixbits.search` (the default method).

Options (``ctx.options``): any :class:`mixbits.SearchConfig` field, e.g. ``init`` (``"hessian"``,
the default, or ``"uniform"``), ``temperature_end`` or ``weight_lr``.
"""

from __future__ import annotations

from ..search import SearchConfig, search
from .base import Allocation, AllocationContext, register_method


@register_method("search")
def differentiable_search(ctx: AllocationContext) -> Allocation:
    """Learn the bits with the weights on the held-out split (see :func:`mixbits.search`)."""
    options = dict(ctx.options)
    if ctx.post_training:  # only the logits learn, on the frozen float weights, from the first epoch
        if options.get("train_weights"):
            raise ValueError("search: train_weights=True updates the weights, which post_training forbids; "
                             "drop the option or drop post_training")
        options = {"warmup_epochs": 0, **options, "train_weights": False}
    config = SearchConfig(target=ctx.target, epochs=ctx.epochs,
                          distill_weight=0.5 if ctx.teacher is not None else 0.0, **options)
    result = search(ctx.model, ctx.space, ctx.loaders["weights"], ctx.loaders["held_out"], config,
                    device=ctx.device, teacher=ctx.teacher, progress=ctx.progress,
                    resume=ctx.resume, on_checkpoint=ctx.on_checkpoint, loss_fn=ctx.loss_fn)
    return Allocation(bits=result.bits, history=result.history,
                      weight_epochs=float(config.epochs) if config.train_weights else 0.0,
                      info={"init": config.init, "multiplier": result.multiplier, **result.movement,
                            "start_bits": result.start_bits, "fill_upgrades": result.fill_upgrades})
