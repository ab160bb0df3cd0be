"""The budget price: the scalar Lagrange multiplier that makes the expected size meet the budget.

Pure numpy on a (units, candidates) table of logits and sizes; :meth:`mixbits.bitspace.BitSpace.project_`
builds the table and applies the price to the decisions.
"""

from __future__ import annotations

import numpy as np

__all__ = ["expected_sizes", "size_and_slope", "solve_price"]


def expected_sizes(a: np.ndarray, c: np.ndarray, nus: np.ndarray) -> np.ndarray:
    """Expected size (units of the budget) at each price in ``nus``; a (L, K), c (L, K), nus (M,) -> (M,)."""
    z = a[None] - nus[:, None, None] * c[None]  # (M, L, K)
    z = z - z.max(axis=2, keepdims=True)
    e = np.exp(z)
    return ((e * c[None]).sum(axis=2) / e.sum(axis=2)).sum(axis=1)


def size_and_slope(a: np.ndarray, c: np.ndarray, nu: float) -> tuple[float, float]:
    """Expected size (budget units) at price ``nu`` and its derivative, ``-sum_u Var_u(c)`` (<= 0)."""
    z = a - nu * c  # (U, K)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    m1 = (p * c).sum(axis=1)  # (U,)
    m2 = (p * c * c).sum(axis=1)
    return float(m1.sum()), -float((m2 - m1 * m1).sum())


def solve_price(a: np.ndarray, c: np.ndarray) -> float:
    """The price nu with expected size == 1 (budget units): bracket, then safeguarded Newton.

    The expected size is non-increasing in nu, with derivative minus the summed variance of the
    sizes. The bracket grows fourfold from [-1, 1] until it holds the crossing (at most +-1e6,
    returned when the size stays above or below 1 there); Newton steps then shrink it, with a
    bisection step whenever Newton would leave the bracket, until it is 1e-12 wide (relative):
    a handful of evaluations of one (U, K) array each. Returns the upper end of the bracket:
    the side that does not overspend.
    """
    limit = 1e6
    lo, hi = -1.0, 1.0
    while size_and_slope(a, c, hi)[0] > 1.0:  # the crossing lies above hi
        if hi >= limit:
            return limit
        lo, hi = hi, min(4.0 * hi, limit)
    while size_and_slope(a, c, lo)[0] <= 1.0:  # lo is within the budget already: the crossing lies below it
        if lo <= -limit:
            return -limit
        lo, hi = max(4.0 * lo, -limit), lo
    nu = 0.5 * (lo + hi)
    for _ in range(200):
        tol = 1e-12 * max(1.0, abs(nu))
        size, slope = size_and_slope(a, c, nu)
        if size > 1.0:
            lo = nu
        else:
            hi = nu
        if hi - lo <= 2 * tol:
            break
        newton = nu - (size - 1.0) / slope if slope < 0 else 0.5 * (lo + hi)
        if not lo < newton < hi:
            nu = 0.5 * (lo + hi)  # Newton would leave the bracket: bisect
        elif abs(newton - nu) > tol:
            nu = newton
        else:  # Newton has converged from one side: probe just across the root to close the bracket
            nu = min(max(newton + (tol if size > 1.0 else -tol), lo), hi)
            if nu in (lo, hi):
                nu = 0.5 * (lo + hi)
    return hi
