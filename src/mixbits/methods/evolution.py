"""``evolution``: an EvoPress-style evolutionary search over discrete assignments, scored by held-out loss.

A black-box reference (Sieberling et al., EvoPress, 2024): no relaxation, no gradient.
The parent starts at the ``hessian`` allocation. Every generation draws ``offspring``
mutations of the parent; a mutation moves one random layer to another candidate and
repairs the size (random other layers step down while it is over the budget, step up
while an upgrade still fits and it is under ``band`` of the budget). The offspring are
ranked on the first quarter of the scoring images, the best two scored on all of them,
and the best replaces the parent if its held-out loss is lower (elitist). It stops after
``evaluations`` full scorings. Scores come from
:class:`~mixbits.methods.scoring.HeldOutScorer` (fixed training-split images, BatchNorm
re-estimated per assignment); the weights never change.

Options: ``evaluations`` (default 150), ``offspring`` (default 8), ``images`` (scoring
images, default 1024, bounded by the run's calibration), ``band`` (default 0.9), ``start``
(``"hessian"`` or ``"uniform"``, default ``"hessian"``).
"""

from __future__ import annotations

import math
import random
import time
from typing import Mapping

from ..derive import solve_budget
from .base import Allocation, AllocationContext, method_options, register_method, require_layer_granularity
from .hessian import hessian_units
from .scoring import HeldOutScorer

__all__ = ["evolve", "evolution_allocation"]

_OPTIONS = {"evaluations", "offspring", "images", "band", "start"}


def _mutate(units: dict[str, int], costs: Mapping[str, Mapping[int, int]], budget: int, floor: int,
            rng: random.Random) -> dict[str, int]:
    """One layer to another candidate, then the size repaired into [floor, budget] by random steps."""
    out = dict(units)
    names = list(costs)
    free = [n for n in names if len(costs[n]) > 1]
    if not free:
        return out
    n = rng.choice(free)
    out[n] = rng.choice([b for b in costs[n] if b != units[n]])
    total = sum(costs[m][out[m]] for m in names)
    others = [m for m in free if m != n] or free
    for _ in range(4 * len(names) * 8):
        if total <= budget:
            break
        m = rng.choice(others if total - costs[n][out[n]] + min(costs[n].values()) > budget else free)
        lower = [b for b in sorted(costs[m]) if b < out[m]]
        if lower:
            total += costs[m][lower[-1]] - costs[m][out[m]]
            out[m] = lower[-1]
    for _ in range(4 * len(names) * 8):
        if total >= floor:
            break
        ups = [(m, b) for m in others for b in sorted(costs[m]) if b > out[m]
               and total + costs[m][b] - costs[m][out[m]] <= budget]
        if not ups:
            break
        m = rng.choice(sorted({m for m, _ in ups}))
        b = min(b for mm, b in ups if mm == m)
        total += costs[m][b] - costs[m][out[m]]
        out[m] = b
    return out


def evolve(scorer: HeldOutScorer, costs: Mapping[str, Mapping[int, int]], budget: int, start: dict[str, int], *,
           evaluations: int = 150, offspring: int = 8, band: float = 0.9, seed: int = 0) -> tuple[dict[str, int], list]:
    """(best assignment found, history of (evaluations, best loss)) within ``budget``."""
    rng = random.Random(seed)
    floor = math.ceil(band * budget)
    parent, best = dict(start), scorer.loss(start)
    history = [(scorer.evaluations, best)]
    quick = max(64, len(scorer.y) // 4)
    generations = 0
    while scorer.evaluations < evaluations and generations < 20 * evaluations:
        generations += 1
        gen_start = scorer.evaluations
        kids = []
        for _ in range(offspring):
            kid = _mutate(parent, costs, budget, floor, rng)
            if sum(costs[n][b] for n, b in kid.items()) <= budget and kid != parent:
                kids.append(kid)
        if kids:
            ranked = sorted(kids, key=lambda k: scorer.loss(k, quick))
            for kid in ranked[:2]:
                loss = scorer.loss(kid)
                if loss < best:
                    parent, best = kid, loss
            history.append((scorer.evaluations, best))
        if scorer.evaluations == gen_start:  # nothing new to score: count the generation, so the search ends
            scorer.evaluations += 1
    return parent, history


@register_method("evolution")
def evolution_allocation(ctx: AllocationContext) -> Allocation:
    """The best assignment an evolutionary search finds by held-out loss (see the module docstring)."""
    options = method_options(ctx, "evolution", _OPTIONS)
    require_layer_granularity(ctx, "evolution")
    t0 = time.perf_counter()
    images = int(options.get("images", 1024))
    if ctx.calibration is not None:
        images = min(images, ctx.calibration)
    costs = ctx.space.cost.cost_table()
    start = options.get("start", "hessian")
    if start == "hessian":
        first, _ = hessian_units(ctx)
    elif start == "uniform":
        first = solve_budget({n: {b: 0.0 for b in c} for n, c in costs.items()}, costs, ctx.budget_bits)
    else:
        raise ValueError(f"evolution: start must be 'hessian' or 'uniform', got {start!r}")
    scorer = HeldOutScorer(ctx.model, ctx.space, ctx.loaders["held_out"], images=images,
                           bn_images=min(512, images), device=ctx.device, loss_fn=ctx.loss_fn)
    units, history = evolve(scorer, costs, ctx.budget_bits, first, evaluations=int(options.get("evaluations", 150)),
                            offspring=int(options.get("offspring", 8)), band=float(options.get("band", 0.9)),
                            seed=ctx.seed)
    ctx.space.unfix_()
    return Allocation(bits=ctx.space.cost.to_layers(units),
                      info={"start_bits": first, "history": history, "seconds": time.perf_counter() - t0,
                            **scorer.info()})
