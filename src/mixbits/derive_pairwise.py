"""The exact quadratic assignment under the budget: per-unit losses plus pairwise interaction terms.

Minimise ``sum_u L_u(b_u) + sum_(u,v) I_uv(b_u, b_v)`` over one candidate per unit, the summed exact
size at or under the budget. :func:`solve_pairwise_budget` writes it as a mixed-integer linear
programme: binaries ``x_ub`` (unit u takes b), and for every interaction term a product variable
``y = x_ua * x_vb`` linearised by ``y >= x_ua + x_vb - 1``, ``y <= x_ua``, ``y <= x_vb``, ``0 <= y <= 1``
(exact at integral x, so y need not be declared integral), solved by HiGHS
(``scipy.optimize.milp``) with a zero relative gap. Without interaction terms it is the
multiple-choice knapsack of :func:`mixbits.derive.solve_budget` (with losses instead of scores).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from .derive import InfeasibleError

__all__ = ["solve_pairwise_budget", "pairwise_objective"]

# Among assignments of equal loss, prefer the one that uses more of the budget (as solve_budget).
_TIE_BREAK = 1e-7
_OBJECTIVE_RANGE = 1e6


def pairwise_objective(bits: Mapping[str, int], losses: Mapping[str, Mapping[int, float]],
                       pairs: Mapping[tuple[str, str], Mapping[tuple[int, int], float]]) -> float:
    """The modelled loss of an assignment: its units' losses plus the interaction terms it meets."""
    total = sum(losses[u][b] for u, b in bits.items())
    return total + sum(terms.get((bits[u], bits[v]), 0.0) for (u, v), terms in pairs.items())


def solve_pairwise_budget(losses: Mapping[str, Mapping[int, float]],
                          pairs: Mapping[tuple[str, str], Mapping[tuple[int, int], float]],
                          costs: Mapping[str, Mapping[int, int]], budget: int) -> dict[str, int]:
    """The assignment of least modelled loss within the budget, exactly.

    Args:
        losses: {unit: {bits: loss}} over each unit's allowed candidates (lower is better).
        pairs: {(unit u, unit v): {(bits of u, bits of v): interaction}}; a missing combination is 0.
        costs: {unit: {bits: exact size in bits}} covering every allowed candidate.
        budget: the largest total size, bits.

    Returns:
        {unit: bits} of least ``pairwise_objective`` with total size <= budget.

    Raises:
        ValueError: a pair names an unknown unit or candidate; the budget is below the smallest size.
        InfeasibleError: no assignment of the allowed candidates fits.
        RuntimeError: the solver failed.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_array

    names = list(losses)
    index = {(u, b): i for i, (u, b) in enumerate((u, b) for u in names for b in sorted(losses[u]))}
    for (u, v), terms in pairs.items():
        for a, b in terms:
            if (u, a) not in index or (v, b) not in index:
                raise ValueError(f"pair term {(u, v)}: {(a, b)} is not an allowed candidate pair")
    if sum(min(costs[u][b] for b in losses[u]) for u in names) > budget:
        raise InfeasibleError(f"no assignment of the allowed candidates fits in {budget} bits")
    terms = [(index[(u, a)], index[(v, b)], val) for (u, v), t in pairs.items() for (a, b), val in t.items()
             if val != 0.0]
    n_x, n_y = len(index), len(terms)
    scale = max(float(budget), 1.0)
    c = np.zeros(n_x + n_y)
    for (u, b), i in index.items():
        c[i] = losses[u][b] - _TIE_BREAK * costs[u][b] / scale
    for k, (_, _, val) in enumerate(terms):
        c[n_x + k] = val
    spread = float(np.abs(c).max()) if c.size else 0.0
    if spread > 0:  # HiGHS's absolute gap of 1e-6 becomes ~1e-12 of the objective's range
        c *= _OBJECTIVE_RANGE / spread
    rows, cols, vals, lo, hi = [], [], [], [], []

    def add(entries: list[tuple[int, float]], low: float, high: float) -> None:
        r = len(lo)
        for col, v in entries:
            rows.append(r)
            cols.append(col)
            vals.append(v)
        lo.append(low)
        hi.append(high)

    for u in names:  # one candidate per unit
        add([(index[(u, b)], 1.0) for b in losses[u]], 1.0, 1.0)
    for k, (i, j, _) in enumerate(terms):  # y = x_i * x_j
        y = n_x + k
        add([(y, 1.0), (i, -1.0), (j, -1.0)], -1.0, np.inf)
        add([(y, 1.0), (i, -1.0)], -np.inf, 0.0)
        add([(y, 1.0), (j, -1.0)], -np.inf, 0.0)
    size_row = len(lo)
    add([(index[(u, b)], float(costs[u][b])) for u in names for b in losses[u]], -np.inf, float(budget))
    integrality = np.r_[np.ones(n_x), np.zeros(n_y)]
    bound = float(budget)
    for _ in range(5):
        hi[size_row] = bound
        a = coo_array((vals, (rows, cols)), shape=(len(lo), n_x + n_y)).tocsr()
        res = milp(c, constraints=[LinearConstraint(a, np.array(lo), np.array(hi))], integrality=integrality,
                   bounds=Bounds(0, 1), options={"mip_rel_gap": 0.0})
        if res.status == 2:
            raise InfeasibleError(f"no assignment of the allowed candidates fits in {budget} bits")
        if res.x is None:
            raise RuntimeError(f"pairwise budget solver failed: {res.message}")
        x = np.round(res.x[:n_x]).astype(int)
        chosen = {u: b for (u, b), i in index.items() if x[i] == 1}
        total = sum(costs[u][b] for u, b in chosen.items())
        if len(chosen) == len(names) and total <= budget:
            return chosen
        bound -= max(total - budget, 1)  # the feasibility tolerance let it slip over: tighten and retry
    raise RuntimeError("pairwise budget solver could not find an assignment within the budget")
