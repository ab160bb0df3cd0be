"""``pairwise``: measured single-layer loss increases plus measured pairwise interactions, the quadratic
assignment solved exactly under the budget.

All losses are held-out losses (:class:`~mixbits.methods.scoring.HeldOutScorer`: fixed images of
the training split, BatchNorm re-estimated per assignment; the weights never change), measured
from the reference state where every layer sits at its largest candidate (float by default):

1. single terms: ``L_l(b) = loss(layer l at b, the others at reference) - loss(reference)`` for
   every layer and candidate: at most ``L * K`` evaluations;
2. the candidates that matter: the exact knapsack on the single terms gives the single-layer
   allocation; each layer keeps the candidates within ``window`` positions of its bits there
   (at most ``2 * window + 1``), less those too large to fit with every other layer at its smallest;
3. pair terms, for the pairs of ``pairs``: ``"neighbours"`` (consecutive layers in model order),
   ``"all"``, or ``"auto"`` (all pairs for models of at most 8 free layers, else neighbours):
   ``I_lm(a, b) = loss(l at a, m at b, the others at reference) - loss(reference) - L_l(a) - L_m(b)``
   for every kept (a, b) where neither is the reference: at most ``pairs * (2 * window + 1)^2``
   evaluations;
4. the bits minimise ``sum_l L_l(b_l) + sum_(l,m) I_lm(b_l, b_m)`` over the kept candidates, the
   exact size within the budget (:func:`mixbits.derive_pairwise.solve_pairwise_budget`, a MILP with
   linearised products and zero gap).

With ``interactions=False`` step 3 is skipped: the single-layer-only allocation over the same
candidates (the knapsack of step 2), the measurement of where single-layer scores mislead.

Measured (``benchmarks/results/allocation_quality.md``, post-training, LeNet-5/mnist5k and the digits
CNN, 8x/16x/24x/28x x 3 seeds, the exhaustive optimum by held-out loss as reference): ``pairwise``
chose the optimum's bits in 21 of 24 cells and was within 0.05 points of its test accuracy in
every cell (LeNet-5 28x: 90.2%, as ``evolution``; ``hessian`` 82.4%), in 5-8 s. The single-layer
version (``interactions=False``, rows ``pairwise_single``, 2 s) chose the optimum's bits in 10 of
24 and the pair terms changed its answer in 13 (11 of 12 LeNet-5 cells, 2 of 12 on the digits
CNN): on LeNet-5 its held-out loss was 0.150 against 0.059 at 16x, 0.201 against 0.195 at 24x and
its accuracy 89.6% against 90.2% at 28x.

Options: ``images`` (scoring images, default 1024, bounded by the run's calibration), ``window``
(default 2), ``pairs`` (default ``"auto"``), ``interactions`` (default True).
"""

from __future__ import annotations

import itertools
import time

from ..derive import solve_budget
from ..derive_pairwise import pairwise_objective, solve_pairwise_budget
from .base import Allocation, AllocationContext, method_options, register_method, require_layer_granularity
from .scoring import HeldOutScorer

__all__ = ["pairwise_allocation", "kept_candidates", "layer_pairs"]

_DEFAULTS = {"images": 1024, "window": 2, "pairs": "auto", "interactions": True}
_ALL_PAIRS_UP_TO = 8  # free layers for which "auto" measures every pair


def kept_candidates(costs: dict[str, dict[int, int]], center: dict[str, int], window: int, budget: int
                    ) -> dict[str, list[int]]:
    """{unit: the candidates within ``window`` positions of ``center[unit]`` that can fit with every other
    unit at its smallest}; the centre is always kept."""
    smallest = {u: min(c.values()) for u, c in costs.items()}
    rest = sum(smallest.values())
    out = {}
    for u, c in costs.items():
        cands = sorted(c)
        i = cands.index(center[u])
        near = cands[max(0, i - window):i + window + 1]
        out[u] = [b for b in near if b == center[u] or rest - smallest[u] + c[b] <= budget]
    return out


def layer_pairs(names: list[str], mode: str) -> list[tuple[str, str]]:
    """The pairs of units measured: consecutive ones in model order, or all."""
    if mode == "auto":
        mode = "all" if len(names) <= _ALL_PAIRS_UP_TO else "neighbours"
    if mode == "all":
        return list(itertools.combinations(names, 2))
    return list(zip(names, names[1:]))


def _options(ctx: AllocationContext) -> dict:
    out = {**_DEFAULTS, **method_options(ctx, "pairwise", set(_DEFAULTS))}
    if out["pairs"] not in ("auto", "all", "neighbours"):
        raise ValueError(f"pairwise: pairs must be 'auto', 'all' or 'neighbours', got {out['pairs']!r}")
    if int(out["window"]) < 0 or int(out["images"]) < 1:
        raise ValueError("pairwise: window must be >= 0 and images >= 1")
    if ctx.calibration is not None:
        out["images"] = min(int(out["images"]), int(ctx.calibration))
    return out


@register_method("pairwise")
def pairwise_allocation(ctx: AllocationContext) -> Allocation:
    """Measured single and pairwise loss terms, the quadratic assignment solved exactly (module docstring)."""
    opts = _options(ctx)
    space = ctx.space
    require_layer_granularity(ctx, "pairwise")
    t0 = time.perf_counter()
    costs = space.cost.cost_table()
    scorer = HeldOutScorer(ctx.model, space, ctx.loaders["held_out"], images=int(opts["images"]),
                           bn_images=min(512, int(opts["images"])), device=ctx.device, loss_fn=ctx.loss_fn)
    reference = {u: max(c) for u, c in costs.items()}
    free = [u for u, c in costs.items() if len(c) > 1]
    base = scorer.loss(reference)
    single = {u: {b: (scorer.loss({**reference, u: b}) - base if b != reference[u] else 0.0) for b in c}
              for u, c in costs.items()}
    single_evaluations = scorer.evaluations - 1
    top = max((abs(v) for per in single.values() for v in per.values()), default=0.0) or 1.0
    first = solve_budget({u: {b: -v / top for b, v in per.items()} for u, per in single.items()}, costs,
                         ctx.budget_bits)
    kept = kept_candidates(costs, first, int(opts["window"]), ctx.budget_bits)
    pair_terms: dict[tuple[str, str], dict[tuple[int, int], float]] = {}
    pairs = layer_pairs(free, str(opts["pairs"])) if opts["interactions"] else []
    for u, v in pairs:
        pair_terms[(u, v)] = {
            (a, b): scorer.loss({**reference, u: a, v: b}) - base - single[u][a] - single[v][b]
            for a in kept[u] for b in kept[v] if a != reference[u] and b != reference[v]}
    losses = {u: {b: single[u][b] for b in kept[u]} for u in costs}
    units = solve_pairwise_budget(losses, pair_terms, costs, ctx.budget_bits)
    space.unfix_()
    return Allocation(bits=space.cost.to_layers(units),
                      info={"single_layer_bits": first, "kept_candidates": kept, "pairs": len(pairs),
                            "single_evaluations": single_evaluations,
                            "pair_evaluations": scorer.evaluations - 1 - single_evaluations,
                            "modelled_loss": base + pairwise_objective(units, losses, pair_terms),
                            "single_layer_modelled_loss": base + pairwise_objective(first, single, pair_terms),
                            "seconds": time.perf_counter() - t0, **scorer.info()})
