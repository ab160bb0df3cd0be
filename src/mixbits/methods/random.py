"""``random``: an assignment drawn uniformly at random among those that fit the budget and spend most of it.

The draw is exact, not rejection sampling: a dynamic programme counts, for every
total size, the assignments that reach it (sizes divided by their common
divisor to keep the table small), the total is drawn in proportion to those
counts, then each layer's bits backwards in proportion to the counts of the
layers before it. Seeded by the run's seed.

Why a band: uniform over *every* assignment that fits would mostly compare the
other methods against smaller models (at 8x nearly all fitting assignments are
far below the budget), and rejection sampling near the all-binary size almost
never accepts. So the draw is restricted to sizes in
``[(1 - band) * budget, budget]``; ``band=1`` gives uniform over all fitting
assignments. When no assignment lies in the band (tiny models), the band starts
at the largest reachable size.

Options: ``band`` (default 0.05), fraction of the budget below it that is still accepted.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Mapping

import numpy as np

from .base import Allocation, AllocationContext, method_options, register_method

__all__ = ["random_bits", "random_allocation"]


def random_bits(costs: Mapping[str, Mapping[int, int]], budget: int, seed: int, *,
                band: float = 0.05) -> dict[str, int]:
    """An assignment uniform among those with size in ``[(1 - band) * budget, budget]``.

    Args:
        costs: {layer: {bits: exact size in bits}}.
        budget: the largest total size, bits.
        seed: seed of the draw.
        band: fraction of the budget, in (0, 1].

    Raises:
        ValueError: a band outside (0, 1], or a budget below the smallest reachable size.
    """
    if not 0 < band <= 1:
        raise ValueError(f"random: band must be in (0, 1], got {band}")
    names = list(costs)
    min_total = sum(min(c.values()) for c in costs.values())
    if budget < min_total:
        raise ValueError(f"budget of {budget} bits is below the smallest reachable size of {min_total} bits")
    unit = reduce(math.gcd, (int(c) for per in costs.values() for c in per.values()))
    cap = budget // unit
    options = [sorted(costs[n].items()) for n in names]
    # counts[l][s]: number of assignments of the first l layers with total size s * unit (float64: up to ~1e308).
    counts = [np.zeros(cap + 1)]
    counts[0][0] = 1.0
    for opts in options:
        prev, new = counts[-1], np.zeros(cap + 1)
        for _, c in opts:
            k = c // unit
            if k <= cap:
                new[k:] += prev[: cap + 1 - k]
        new /= max(new.max(), 1.0)  # rescale: only ratios within a layer's row matter when drawing
        counts.append(new)
    reachable = np.nonzero(counts[-1])[0]
    lo = min(int(math.ceil((1 - band) * budget / unit)), int(reachable.max()))
    rng = np.random.default_rng(int(seed))
    final = counts[-1][lo:]
    total = lo + int(rng.choice(len(final), p=final / final.sum()))
    out: dict[str, int] = {}
    for layer in range(len(names) - 1, -1, -1):
        prev = counts[layer]
        weights = np.array([prev[total - c // unit] if c // unit <= total else 0.0 for _, c in options[layer]])
        pick = int(rng.choice(len(weights), p=weights / weights.sum()))
        b, c = options[layer][pick]
        out[names[layer]] = int(b)
        total -= c // unit
    return {n: out[n] for n in names}


@register_method("random")
def random_allocation(ctx: AllocationContext) -> Allocation:
    """A uniformly random assignment near the budget, seeded by ``ctx.seed`` (see the module docstring)."""
    options = method_options(ctx, "random", {"band"})
    units = random_bits(ctx.space.cost.cost_table(), ctx.budget_bits, ctx.seed, band=float(options.get("band", 0.05)))
    return Allocation(bits=ctx.space.cost.to_layers(units), info={"seed": ctx.seed})
