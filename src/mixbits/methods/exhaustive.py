"""``exhaustive``: every maximal assignment under the budget, the best by held-out loss.

Where the space is small enough (a few layers, or a budget so tight that few choices are left), it
can be enumerated: the answer is then the best the held-out data can tell, the ground truth other
methods are judged against, and no heuristic stands between the budget and the result.

An assignment is *maximal* when no single layer can move to its next wider candidate without
leaving the budget. Only maximal assignments are scored: any other leaves enough bits unspent to
widen a layer, which does not make the quantized weight worse. They are listed first (depth-first,
widest layers first, pruned by the budget); more than ``limit`` of them fails before any scoring,
with the count so far, so a run never starts an enumeration it cannot finish.

Scoring (:class:`~mixbits.methods.scoring.HeldOutScorer`: fixed held-out images of the training
split, BatchNorm re-estimated per assignment, the run's loss): with more than ``keep`` assignments,
the scoring races them (successive halving): every assignment is scored on the first ``screen``
images (BatchNorm re-estimated on those same images), the best eighth (at least ``keep``) go on to
four times as many images, and so on until ``keep`` or fewer remain or the next round would use
all ``images``; the survivors are scored on all of them and the lowest loss wins (ties: the first in
enumeration order). The weights never change.

Options: ``limit`` (most maximal assignments, default 20000), ``screen`` (images of the first
round, default 64; 0 scores every assignment on all images), ``keep`` (assignments scored on all
images, default 32), ``images`` (scoring images, default 1024, bounded by the run's calibration).
"""

from __future__ import annotations

import logging
import time
from typing import Iterator, Mapping

from .base import Allocation, AllocationContext, method_options, register_method, require_layer_granularity
from .scoring import HeldOutScorer

__all__ = ["maximal_assignments", "exhaustive_allocation"]

_OPTIONS = {"limit", "screen", "keep", "images"}
log = logging.getLogger(__name__)


class TooManyAssignments(ValueError):
    """More maximal assignments than the enumeration's limit."""


def _iter_maximal(costs: Mapping[str, Mapping[int, int]], budget: int) -> Iterator[dict[str, int]]:
    """Every maximal assignment within ``budget``, depth-first over the units, costliest first."""
    order = sorted(costs, key=lambda n: (-max(costs[n].values()), n))
    if not order:
        yield {}
        return
    cands = [sorted(costs[n], key=lambda b: (costs[n][b], b)) for n in order]
    # the cost of moving unit i from its j-th candidate to the next wider one (None: it is the widest)
    step = [[costs[n][c[j + 1]] - costs[n][c[j]] if j + 1 < len(c) else None for j in range(len(c))]
            for n, c in zip(order, cands)]
    floor = [0] * (len(order) + 1)  # least cost of units i.. (each at its narrowest)
    for i in range(len(order) - 1, -1, -1):
        floor[i] = floor[i + 1] + costs[order[i]][cands[i][0]]
    if floor[0] > budget:
        return
    pick = [0] * len(order)
    spent = [0] * (len(order) + 1)  # cost of units ..i-1 as picked
    i = 0
    while True:
        if i == len(order):
            slack = budget - spent[i]
            if all(s[j] is None or s[j] > slack for s, j in zip(step, pick)):
                yield {n: cands[k][pick[k]] for k, n in enumerate(order)}
            i -= 1
            pick[i] += 1
        elif pick[i] < len(cands[i]) and spent[i] + costs[order[i]][cands[i][pick[i]]] + floor[i + 1] <= budget:
            spent[i + 1] = spent[i] + costs[order[i]][cands[i][pick[i]]]
            i += 1
            if i < len(order):
                pick[i] = 0
            continue
        else:  # this unit has no candidate left that fits: back up
            pick[i] = 0
            i -= 1
            if i < 0:
                return
            pick[i] += 1


def maximal_assignments(costs: Mapping[str, Mapping[int, int]], budget: int, limit: int) -> list[dict[str, int]]:
    """Every maximal assignment within ``budget`` ({unit: bits}), in a fixed order.

    Raises:
        TooManyAssignments: more than ``limit`` of them (the message gives the count reached).
    """
    out: list[dict[str, int]] = []
    for a in _iter_maximal(costs, budget):
        out.append(a)
        if len(out) > limit:
            raise TooManyAssignments(
                f"exhaustive: more than {limit} maximal assignments under this budget ({len(costs)} layers); "
                f"use 'probe' or 'evolution', or raise the option 'limit' (every assignment costs a held-out "
                f"evaluation)")
    return out


def _positive_int(options: Mapping, name: str, default: int, least: int) -> int:
    value = options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"exhaustive: {name} must be an integer >= {least}, got {value!r}")
    return value


@register_method("exhaustive")
def exhaustive_allocation(ctx: AllocationContext) -> Allocation:
    """The maximal assignment with the least held-out loss (see the module docstring)."""
    options = method_options(ctx, "exhaustive", _OPTIONS)
    require_layer_granularity(ctx, "exhaustive")
    limit = _positive_int(options, "limit", 20000, 1)
    screen = _positive_int(options, "screen", 64, 0)
    keep = _positive_int(options, "keep", 32, 1)
    images = _positive_int(options, "images", 1024, 1)
    if ctx.calibration is not None:
        images = min(images, ctx.calibration)
    t0 = time.perf_counter()
    costs = ctx.space.cost.cost_table()
    space = maximal_assignments(costs, ctx.budget_bits, limit)
    if not space:
        raise ValueError(f"exhaustive: no assignment fits the budget of {ctx.budget_bits} bits")
    scorer = HeldOutScorer(ctx.model, ctx.space, ctx.loaders["held_out"], images=images,
                           bn_images=min(512, images), device=ctx.device, loss_fn=ctx.loss_fn)
    shortlist, rounds = list(range(len(space))), []
    n = screen
    while screen and len(shortlist) > keep and n < len(scorer.y):
        quick = scorer.subset(n)
        losses = {k: quick.loss(space[k]) for k in shortlist}
        survivors = max(keep, -(-len(shortlist) // 8))
        rounds.append({"assignments": len(shortlist), "images": n})
        log.info("exhaustive: %d assignments scored on %d images, %d go on", len(shortlist), n, survivors)
        shortlist = sorted(sorted(shortlist, key=lambda k: (losses[k], k))[:survivors])
        n *= 4
    shortlist = [space[k] for k in shortlist]
    best = min(shortlist, key=scorer.loss)  # the first of equal losses, in enumeration order
    ctx.space.unfix_()
    return Allocation(bits=ctx.space.cost.to_layers(best),
                      info={"assignments": len(space), "rounds": rounds, "rescored": len(shortlist),
                            "held_out_loss": scorer.loss(best),
                            "seconds": time.perf_counter() - t0, **scorer.info()})
