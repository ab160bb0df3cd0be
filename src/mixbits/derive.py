"""Derivation: the discrete bit assignment that best follows the search under the budget.

A multiple-choice knapsack: pick one candidate per layer, maximise the summed
preference (log-probabilities of the search), keep the summed exact size at or
under the budget. :func:`solve_budget` solves it exactly with HiGHS
(``scipy.optimize.milp`` with a zero relative MIP gap and a scaled objective, so that near-ties are decided by the
scores and not by the solver's stopping rule); :func:`solve_budget_dp` is an exact dynamic programme
over sizes for small problems, used as a reference in tests.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["InfeasibleError", "solve_budget", "solve_budget_dp"]

# Among assignments of equal preference, prefer the one that uses more of the budget.
_TIE_BREAK = 1e-7
# The spread the solver's objective is scaled to (see solve_budget).
_OBJECTIVE_RANGE = 1e6


def _validate(scores: Mapping[str, Mapping[int, float]], costs: Mapping[str, Mapping[int, int]], budget: int,
              floor: int) -> None:
    if set(scores) != set(costs):
        raise ValueError("scores and costs must name the same layers")
    min_total = sum(min(c.values()) for c in costs.values())
    if budget < min_total:
        raise ValueError(f"budget of {budget} bits is below the smallest reachable size of {min_total} bits")
    if floor > budget:
        raise ValueError(f"floor of {floor} bits is above the budget of {budget} bits")


class InfeasibleError(ValueError):
    """No assignment has a total size between the floor and the budget."""


def solve_budget(scores: Mapping[str, Mapping[int, float]], costs: Mapping[str, Mapping[int, int]],
                 budget: int, *, floor: int = 0) -> dict[str, int]:
    """Exact multiple-choice knapsack with HiGHS.

    Args:
        scores: {layer: {bits: preference}} (higher is better).
        costs: {layer: {bits: exact size in bits}}.
        budget: the largest total size allowed, in bits.
        floor: the smallest total size allowed, in bits.

    Returns:
        {layer: bits} whose total cost is in ``[floor, budget]``.

    Raises:
        ValueError: the budget is below the smallest reachable size.
        InfeasibleError: no assignment lies between ``floor`` and ``budget``.
        RuntimeError: the solver failed.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array

    _validate(scores, costs, budget, floor)
    names = list(costs)
    index = [(n, b) for n in names for b in sorted(costs[n])]
    row = np.repeat(np.arange(len(names)), [len(costs[n]) for n in names])  # the unit of every variable
    cost_vec = np.array([costs[n][b] for n, b in index], dtype=np.float64)
    scale = max(float(budget), 1.0)
    objective = -np.array([scores[n][b] + _TIE_BREAK * costs[n][b] / scale for n, b in index])
    # HiGHS also stops within an absolute gap of 1e-6 (not settable through scipy): shift each unit's
    # scores to a maximum of 0 (the same constant for every assignment) and scale their range to
    # _OBJECTIVE_RANGE, so that gap is ~1e-12 of the range of the scores.
    objective -= np.minimum.reduceat(objective, np.r_[0, np.cumsum([len(costs[n]) for n in names])[:-1]])[row]
    spread = float(objective.max()) if objective.size else 0.0
    if spread > 0:
        objective *= _OBJECTIVE_RANGE / spread
    # one choice per unit: a sparse (units, variables) matrix, so tens of thousands of units stay cheap
    choose_one = csr_array((np.ones(len(index)), (row, np.arange(len(index)))), shape=(len(names), len(index)))
    bound = float(budget)
    for _ in range(5):
        constraints = [LinearConstraint(choose_one, 1.0, 1.0),
                       LinearConstraint(cost_vec[None, :], float(floor) if floor > 0 else -np.inf, bound)]
        # mip_rel_gap=0: prove optimality (HiGHS stops at a 1e-4 relative gap by default, so near-ties could lose)
        res = milp(objective, constraints=constraints, integrality=np.ones(len(index)), bounds=Bounds(0, 1),
                   options={"mip_rel_gap": 0.0})
        if res.status == 2:  # infeasible
            raise InfeasibleError(f"no assignment has a size between {floor} and {budget} bits")
        if res.x is None:
            raise RuntimeError(f"budget solver failed: {res.message}")
        x = np.round(res.x).astype(int)
        chosen = {n: b for (n, b), xi in zip(index, x) if xi == 1}
        total = sum(costs[n][b] for n, b in chosen.items())
        if len(chosen) == len(names) and floor <= total <= budget:
            return chosen
        # The solver's feasibility tolerance let the rounded answer slip over: tighten and retry.
        bound -= max(total - budget, 1)
    raise RuntimeError("budget solver could not find an assignment within the budget")


def solve_budget_dp(scores: Mapping[str, Mapping[int, float]], costs: Mapping[str, Mapping[int, int]],
                    budget: int, *, floor: int = 0) -> dict[str, int]:
    """Exact dynamic programme over total size; O(layers * candidates * budget). For small problems."""
    _validate(scores, costs, budget, floor)
    names = list(costs)
    neg = -np.inf
    best = np.full(budget + 1, neg)
    best[0] = 0.0
    choice: list[np.ndarray] = []
    for n in names:
        new = np.full(budget + 1, neg)
        arg = np.zeros(budget + 1, dtype=np.int64)
        for b in sorted(costs[n]):
            c = costs[n][b]
            if c > budget:
                continue
            cand = np.full(budget + 1, neg)
            cand[c:] = best[: budget + 1 - c] + scores[n][b] + _TIE_BREAK * c / max(budget, 1)
            better = cand > new
            new[better] = cand[better]
            arg[better] = b
        best = new
        choice.append(arg)
    best[:floor] = neg
    total = int(np.argmax(best))
    if best[total] == neg:
        raise InfeasibleError(f"no assignment has a size between {floor} and {budget} bits")
    out: dict[str, int] = {}
    for n, arg in zip(reversed(names), reversed(choice)):
        b = int(arg[total])
        out[n] = b
        total -= costs[n][b]
    return dict(reversed(list(out.items())))
