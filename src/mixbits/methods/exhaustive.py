"""``exhaustive``: every maximal assignment under the budget, the best by held-out loss.

Where the space is small enough (a few layers, or a budget so tight that few choices are left), it
can be enumerated: the answer is then the best the held-out data can tell, the ground truth other
methods are judged against, and no heuristic stands between the budget and the result.

An assignment is *maximal* when no single layer can move to its next wider candidate without
leaving the budget. By default only maximal assignments are scored: any other leaves enough bits
unspent to widen a layer, which brings its quantized weight closer to the float one. That does not
always lower the loss: on LeNet-5 at 28x the best of every assignment using 85-100% of the budget
kept the first convolution at 4 bits where 8 fitted, 0.6 points better on the test set than the best
maximal one. With ``band`` (a fraction of the budget) the space is every assignment that uses
``band`` to 100% of the budget instead (the allocation-quality benchmark's exhaustive reference uses
0.85). The assignments are listed first (depth-first, costliest layers first, pruned by the budget);
more than ``limit`` of them fails before any scoring, so a run never starts an enumeration it cannot
finish.

Scoring (:class:`~mixbits.methods.scoring.HeldOutScorer`: fixed held-out images of the training
split, BatchNorm re-estimated per assignment, the run's loss): with more than ``keep`` assignments,
the scoring races them (successive halving): every assignment is scored on the first ``screen``
images (BatchNorm re-estimated on those same images), the best eighth (at least ``keep``) go on to
four times as many images, and so on until ``keep`` or fewer remain or the next round would use
all ``images``; the survivors are scored on all of them and the lowest loss wins (ties: the first in
enumeration order). The weights never change.

Options: ``limit`` (most assignments, default 20000), ``band`` (default None: the maximal ones),
``screen`` (images of the first round, default 64; 0 scores every assignment on all images),
``keep`` (assignments scored on all images, default 32), ``images`` (scoring images, default 1024,
bounded by the run's calibration).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Iterator, Mapping

from ..space import BitSpace
from .base import Allocation, AllocationContext, check_options, method_options, register_method, require_layer_granularity
from .scoring import HeldOutScorer

__all__ = ["TooManyAssignments", "enumerate_assignments", "exhaustive_allocation", "positive_int", "race"]

_OPTIONS = {"limit", "band", "screen", "keep", "images"}
log = logging.getLogger(__name__)


class TooManyAssignments(ValueError):
    """More assignments than the enumeration's limit."""


def _iter_assignments(costs: Mapping[str, Mapping[int, int]], budget: int, band: float | None,
                      near: tuple[Mapping[str, int], int] | None = None) -> Iterator[dict[str, int]]:
    """Depth-first over the units, costliest first: every maximal assignment within ``budget`` (``band``
    None), or every assignment costing between ``band * budget`` and ``budget``; with ``near`` = (assignment,
    radius) only those differing from that assignment in at most ``radius`` units."""
    order = sorted(costs, key=lambda n: (-max(costs[n].values()), n))
    cands = [sorted(costs[n], key=lambda b: (costs[n][b], b)) for n in order]
    # the cost of moving unit i from its j-th candidate to the next wider one (None: it is the widest)
    step = [[costs[n][c[j + 1]] - costs[n][c[j]] if j + 1 < len(c) else None for j in range(len(c))]
            for n, c in zip(order, cands)]
    least = [0] * (len(order) + 1)  # least and most cost of units i.. (each at its narrowest, widest)
    most = [0] * (len(order) + 1)
    for i in range(len(order) - 1, -1, -1):
        least[i] = least[i + 1] + costs[order[i]][cands[i][0]]
        most[i] = most[i + 1] + costs[order[i]][cands[i][-1]]
    low = -1 if band is None else math.ceil(band * budget)
    if least[0] > budget or most[0] < low:
        return
    if not order:
        yield {}
        return
    centre = [near[0][n] for n in order] if near is not None else None
    radius = near[1] if near is not None else len(order)
    pick = [0] * len(order)
    spent = [0] * (len(order) + 1)  # cost of units ..i-1 as picked
    moved = [0] * (len(order) + 1)  # units ..i-1 picked away from the centre
    i = 0
    while True:
        if i == len(order):
            slack = budget - spent[i]
            if band is not None or all(s[j] is None or s[j] > slack for s, j in zip(step, pick)):
                yield {n: cands[k][pick[k]] for k, n in enumerate(order)}
            i -= 1
            pick[i] += 1
        elif pick[i] < len(cands[i]) and spent[i] + costs[order[i]][cands[i][pick[i]]] + least[i + 1] <= budget:
            spent[i + 1] = spent[i] + costs[order[i]][cands[i][pick[i]]]
            if spent[i + 1] + most[i + 1] < low:  # too narrow to reach the band: a wider candidate may
                pick[i] += 1
                continue
            moved[i + 1] = moved[i] + (centre is not None and cands[i][pick[i]] != centre[i])
            if moved[i + 1] > radius:  # too far from the centre: another candidate (the centre's) may not be
                pick[i] += 1
                continue
            i += 1
            if i < len(order):
                pick[i] = 0
        else:  # this unit has no candidate left that fits: back up
            pick[i] = 0
            i -= 1
            if i < 0:
                return
            pick[i] += 1


def enumerate_assignments(costs: Mapping[str, Mapping[int, int]], budget: int, limit: int, *,
                          band: float | None = None,
                          near: tuple[Mapping[str, int], int] | None = None) -> list[dict[str, int]]:
    """Every maximal assignment within ``budget`` ({unit: bits}), or with ``band`` every assignment costing
    ``band * budget`` to ``budget``; with ``near`` = (assignment, radius) only those that differ from the
    assignment in at most ``radius`` units; in a fixed order.

    Raises:
        TooManyAssignments: more than ``limit`` of them.
    """
    out: list[dict[str, int]] = []
    kind = "maximal assignments" if band is None else f"assignments using {band:.0%}-100% of the budget"
    if near is not None:
        kind += f" within {near[1]} layers of the start"
    for a in _iter_assignments(costs, budget, band, near):
        out.append(a)
        if len(out) > limit:
            raise TooManyAssignments(
                f"exhaustive: more than {limit} {kind} ({len(costs)} layers); use 'probe' or 'evolution', or "
                f"raise the option 'limit' (every assignment costs a held-out evaluation)")
    return out


def positive_int(options: Mapping, name: str, default: int | None, least: int, method: str = "exhaustive") -> int:
    """``options[name]`` (``default`` when absent), checked to be an integer >= ``least``."""
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{method}: {name} must be an integer >= {least}, got {value!r}")
    return value


def _settings(options: Mapping) -> dict:
    """The checked options (see the module docstring), before any work."""
    band = options.get("band")
    if band is not None and (isinstance(band, bool) or not isinstance(band, (int, float)) or not 0 < band <= 1):
        raise ValueError(f"exhaustive: band must be a fraction of the budget in (0, 1], got {band!r}")
    return {"limit": positive_int(options, "limit", 20000, 1), "band": band,
            "screen": positive_int(options, "screen", 64, 0), "keep": positive_int(options, "keep", 32, 1),
            "images": positive_int(options, "images", 1024, 1)}


def _space(costs: Mapping[str, Mapping[int, int]], budget: int, opts: Mapping) -> list[dict[str, int]]:
    space = enumerate_assignments(costs, budget, opts["limit"], band=opts["band"])
    if not space:
        raise ValueError(f"exhaustive: no assignment fits the budget of {budget} bits")
    return space


def race(scorer: HeldOutScorer, space: list[dict[str, int]], screen: int, keep: int,
         subsets: dict[int, HeldOutScorer] | None = None) -> tuple[dict[str, int], list[dict], int]:
    """(the assignment of ``space`` with the least loss on all of ``scorer``'s images after successive halving,
    the screening rounds, how many were scored on all images); see the module docstring. ``subsets`` keeps the
    screening scorers by image count, so a later race over overlapping assignments reuses their scores."""
    subsets = {} if subsets is None else subsets
    shortlist, rounds = list(range(len(space))), []
    n = screen
    while screen and len(shortlist) > keep and n < len(scorer.y):
        if n not in subsets:
            subsets[n] = scorer.subset(n)
        quick = subsets[n]
        losses = {k: quick.loss(space[k]) for k in shortlist}
        survivors = max(keep, -(-len(shortlist) // 8))
        rounds.append({"assignments": len(shortlist), "images": n})
        log.info("%d assignments scored on %d images, %d go on", len(shortlist), n, survivors)
        shortlist = sorted(sorted(shortlist, key=lambda k: (losses[k], k))[:survivors])
        n *= 4
    finalists = [space[k] for k in shortlist]
    return min(finalists, key=scorer.loss), rounds, len(finalists)  # the first of equal losses, in order


@register_method("exhaustive")
def exhaustive_allocation(ctx: AllocationContext) -> Allocation:
    """The maximal assignment with the least held-out loss (see the module docstring)."""
    opts = _settings(method_options(ctx, "exhaustive", _OPTIONS))
    require_layer_granularity(ctx, "exhaustive")
    images = opts["images"] if ctx.calibration is None else min(opts["images"], ctx.calibration)
    screen, keep = opts["screen"], opts["keep"]
    t0 = time.perf_counter()
    space = _space(ctx.space.cost.cost_table(), ctx.budget_bits, opts)
    scorer = HeldOutScorer(ctx.model, ctx.space, ctx.loaders["held_out"], images=images,
                           bn_images=min(512, images), device=ctx.device, loss_fn=ctx.loss_fn)
    best, rounds, rescored = race(scorer, space, screen, keep)
    ctx.space.unfix_()
    return Allocation(bits=ctx.space.cost.to_layers(best),
                      info={"assignments": len(space), "rounds": rounds, "rescored": rescored,
                            "held_out_loss": scorer.loss(best),
                            "seconds": time.perf_counter() - t0, **scorer.info()})


def _preflight(space: BitSpace, budget_bits: int, options: Mapping) -> None:
    """Before any training: the options, the granularity, and the number of assignments against ``limit``."""
    opts = _settings(check_options(options, "exhaustive", _OPTIONS))
    if any(layer.grouped for layer in space.layers):
        raise ValueError("exhaustive: bits per structure are not supported; use granularity 'layer'")
    _space(space.cost.cost_table(), budget_bits, opts)


exhaustive_allocation.preflight = _preflight  # type: ignore[attr-defined]
