"""``refine``: from an allocation, every maximal assignment within a few layers of it, raced by held-out loss.

Under a tight budget every layer sits at 1-2 bits, and the best assignment is not where scores measured
near the float weights (``hessian``, ``pairwise``) or summed single-step changes point: on ResNet-20 at
28x the best of all 10,254 maximal assignments (``exhaustive``) gives one stage-2 convolution 2 bits
where ``hessian`` gives it 1, paid for by three stage-1 convolutions one step narrower, a move of four
layers at once whose summed single-layer changes predict almost nothing (-0.0006 in held-out loss, where
it gains 0.009). So ``refine`` does not predict; it enumerates and measures, near a good start:

1. every maximal assignment (no layer can take its next wider candidate and still fit) that differs from
   the current one in at most ``radius`` layers, listed as ``exhaustive`` lists them; a radius whose ball
   holds more than ``limit`` assignments shrinks by one until it fits;
2. they are raced as ``exhaustive`` races them (all on ``screen`` held-out images, the best eighth on
   four times as many, ..., at least ``keep`` on all ``images``);
3. if the winner's loss on all images is lower than the current assignment's, it becomes current and the
   search goes back to 1 (at most ``rounds`` moves); otherwise the current one is the answer.

Every move lowers the held-out loss on all scoring images, so the answer is never worse by that measure
than the start. Scores come from :class:`~mixbits.methods.scoring.HeldOutScorer` (fixed held-out images
of the training split, BatchNorm re-estimated per assignment, the run's loss); the weights never change.
``probe`` refines its post-training answer this way.

Options: ``start`` (a registered method whose answer is the start, default ``"hessian"``), ``radius``
(default 4), ``limit`` (most assignments in one ball, default 1000), ``rounds`` (most moves, default 3),
``screen`` (default 64; 0 scores every assignment on all images), ``keep`` (default 32), ``images``
(scoring images, default 1024, bounded by the run's calibration).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from .base import (METHODS, Allocation, AllocationContext, check_options, method_options, register_method,
                   require_layer_granularity, run_isolated)
from .exhaustive import TooManyAssignments, enumerate_assignments, positive_int, race
from .scoring import HeldOutScorer

__all__ = ["ball", "refine", "refine_allocation", "refine_from"]

_OPTIONS = {"start", "radius", "limit", "rounds", "screen", "keep", "images"}
_RACE = ("radius", "limit", "rounds", "screen", "keep")
log = logging.getLogger(__name__)


def _settings(options: Mapping[str, Any]) -> dict[str, Any]:
    options = check_options(options, "refine", _OPTIONS)
    out = {"start": options.get("start", "hessian"), "radius": options.get("radius", 4),
           "limit": options.get("limit", 1000), "rounds": options.get("rounds", 3),
           "screen": options.get("screen", 64), "keep": options.get("keep", 32), "images": options.get("images", 1024)}
    if not isinstance(out["start"], str) or out["start"] in ("refine", "probe"):
        raise ValueError(f"refine: start must name another registered method (e.g. 'hessian'), got {out['start']!r}")
    METHODS.get(out["start"])  # an unknown name fails here with the known ones
    for key, low in (("radius", 1), ("limit", 1), ("rounds", 0), ("screen", 0), ("keep", 1), ("images", 1)):
        positive_int(out, key, None, low, "refine")
    return out


def ball(costs: Mapping[str, Mapping[int, int]], budget: int, centre: Mapping[str, int], radius: int,
         limit: int) -> tuple[list[dict[str, int]], int]:
    """(the maximal assignments within ``budget`` that differ from ``centre`` in at most r units, r) for the
    largest r <= ``radius`` whose ball holds at most ``limit`` of them; ([], 0) if not even r = 1 does."""
    for r in range(radius, 0, -1):
        try:
            return enumerate_assignments(costs, budget, limit, near=(centre, r)), r
        except TooManyAssignments:
            continue
    return [], 0


def refine(scorer: HeldOutScorer, costs: Mapping[str, Mapping[int, int]], budget: int, start: Mapping[str, int], *,
           radius: int = 4, limit: int = 1000, rounds: int = 3, screen: int = 64,
           keep: int = 32) -> tuple[dict[str, int], list[dict]]:
    """(the assignment the search reaches from ``start``, one record per ball raced) within ``budget``.

    Each move lowers ``scorer.loss`` on all its images (module docstring)."""
    current, current_loss = dict(start), scorer.loss(start)
    subsets: dict[int, HeldOutScorer] = {}
    history = [{"loss": current_loss, "bits": dict(current)}]
    for _ in range(rounds):
        space, r = ball(costs, budget, current, radius, limit)
        if not space:
            break
        best, screening, _ = race(scorer, space, screen, keep, subsets)
        loss = scorer.loss(best)
        history[-1].update(radius=r, assignments=len(space), rounds=screening)
        log.info("refine: %d assignments within %d layers, best %.5f against %.5f", len(space), r, loss, current_loss)
        if not loss < current_loss:
            break
        current, current_loss = dict(best), loss
        history.append({"loss": loss, "bits": dict(best)})
    return current, history


def _preflight(space, budget_bits: int, options: Mapping[str, Any]) -> None:
    """Before any training: the options and the granularity."""
    _settings(options)
    if any(layer.grouped for layer in space.layers):
        raise ValueError("refine: bits per structure are not supported; use granularity 'layer'")


@register_method("refine")
def refine_allocation(ctx: AllocationContext) -> Allocation:
    """The assignment the race over nearby maximal assignments reaches from ``start``'s answer (module docstring)."""
    options = _settings(method_options(ctx, "refine", _OPTIONS))
    require_layer_granularity(ctx, "refine")
    t0 = time.perf_counter()
    float_state = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    first = ctx.space.cost.to_units(run_isolated(ctx, options["start"], {}, float_state).bits)
    images = options["images"] if ctx.calibration is None else min(options["images"], ctx.calibration)
    units, history, scored = refine_from(ctx, first, images, **{k: options[k] for k in _RACE})
    return Allocation(bits=ctx.space.cost.to_layers(units),
                      info={"start_bits": first, "balls": history, "seconds": time.perf_counter() - t0, **scored})


def refine_from(ctx: AllocationContext, start: dict, images: int, **race: int) -> tuple[dict, list, dict]:
    """(the units :func:`refine` reaches from ``start`` (units), its balls, the scorer's info), scored on ``images``
    held-out images of ``ctx``; the space left unfixed. ``race``: ``radius``, ``limit``, ``rounds``, ``screen``,
    ``keep``. Used by ``refine`` and by ``probe``'s post-training refinement."""
    scorer = HeldOutScorer(ctx.model, ctx.space, ctx.loaders["held_out"], images=images,
                           bn_images=min(512, images), device=ctx.device, loss_fn=ctx.loss_fn)
    units, history = refine(scorer, ctx.space.cost.cost_table(), ctx.budget_bits, start, **race)
    ctx.space.unfix_()
    return units, history, scorer.info()


refine_allocation.preflight = _preflight  # type: ignore[attr-defined]
