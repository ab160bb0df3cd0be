import itertools
import random

import pytest

from mixbits.derive import solve_budget, solve_budget_dp


def brute_force(scores, costs, budget, floor=0):
    names = list(costs)
    best, best_val = None, None
    for combo in itertools.product(*[sorted(costs[n]) for n in names]):
        total = sum(costs[n][b] for n, b in zip(names, combo))
        if total > budget or total < floor:
            continue
        val = sum(scores[n][b] for n, b in zip(names, combo))
        if best_val is None or val > best_val + 1e-12:
            best, best_val = dict(zip(names, combo)), val
    return best, best_val


@pytest.mark.parametrize("seed", range(25))
def test_exact_solvers_match_brute_force(seed):
    rng = random.Random(seed)
    n_layers = rng.randint(1, 5)
    cands = sorted(rng.sample([1, 2, 3, 4, 5, 6, 8, 16, 32], rng.randint(1, 5)))
    costs, scores = {}, {}
    for i in range(n_layers):
        n = rng.randint(1, 40)
        costs[f"l{i}"] = {b: n * b + rng.randint(0, 3) for b in cands}
        scores[f"l{i}"] = {b: rng.uniform(-5, 0) for b in cands}
    lo = sum(min(c.values()) for c in costs.values())
    hi = sum(max(c.values()) for c in costs.values())
    budget = rng.randint(lo, hi)
    ref, ref_val = brute_force(scores, costs, budget)
    for solver in (solve_budget, solve_budget_dp):
        got = solver(scores, costs, budget)
        assert sum(costs[n][b] for n, b in got.items()) <= budget
        assert sum(scores[n][b] for n, b in got.items()) == pytest.approx(ref_val, abs=1e-6)


def test_budget_below_minimum_is_an_error():
    with pytest.raises(ValueError, match="below the smallest"):
        solve_budget({"a": {1: 0.0}}, {"a": {1: 10}}, 9)


def test_large_costs_never_exceed_budget():
    rng = random.Random(0)
    costs = {f"l{i}": {b: rng.randint(10_000, 3_000_000) * b for b in (1, 2, 4, 8, 16, 32)} for i in range(40)}
    scores = {n: {b: rng.uniform(-3, 0) for b in c} for n, c in costs.items()}
    budget = sum(c[2] for c in costs.values())
    got = solve_budget(scores, costs, budget)
    assert sum(costs[n][b] for n, b in got.items()) <= budget


@pytest.mark.parametrize("seed", range(15))
def test_floor_matches_brute_force(seed):
    from mixbits.derive import InfeasibleError

    rng = random.Random(100 + seed)
    cands = [1, 2, 4, 8]
    costs = {f"l{i}": {b: rng.randint(5, 30) * b + 2 for b in cands} for i in range(rng.randint(2, 4))}
    scores = {n: {b: rng.uniform(-5, 0) for b in cands} for n in costs}
    lo = sum(min(c.values()) for c in costs.values())
    hi = sum(max(c.values()) for c in costs.values())
    budget = rng.randint(lo, hi)
    floor = int(budget * rng.uniform(0.8, 1.0))
    ref, ref_val = brute_force(scores, costs, budget, floor)
    for solver in (solve_budget, solve_budget_dp):
        if ref is None:
            with pytest.raises(InfeasibleError):
                solver(scores, costs, budget, floor=floor)
            continue
        got = solver(scores, costs, budget, floor=floor)
        assert floor <= sum(costs[n][b] for n, b in got.items()) <= budget
        assert sum(scores[n][b] for n, b in got.items()) == pytest.approx(ref_val, abs=1e-6)


@pytest.mark.parametrize("seed", range(12))
def test_near_ties_are_solved_exactly(seed):
    """Scores of order 1 that differ by ~1e-6: a solver stopping at HiGHS's default 1e-4 relative gap
    can return a worse assignment; the exact solvers agree with brute force."""
    rng = random.Random(500 + seed)
    cands = (1, 2, 4, 8)
    costs, scores = {}, {}
    for i in range(6):
        n = rng.randint(5, 30)
        costs[f"l{i}"] = {b: n * b for b in cands}
        base = rng.uniform(-1.0, -0.5)
        # concave in bits, every layer nearly the same: many assignments within 1e-5 of the best
        scores[f"l{i}"] = {b: base - 0.3 / b + rng.uniform(0, 1e-5) for b in cands}
    lo = sum(min(c.values()) for c in costs.values())
    hi = sum(max(c.values()) for c in costs.values())
    budget = lo + (hi - lo) // 3
    _, ref_val = brute_force(scores, costs, budget)
    for solver in (solve_budget, solve_budget_dp):
        got = solver(scores, costs, budget)
        assert sum(costs[n][b] for n, b in got.items()) <= budget
        assert sum(scores[n][b] for n, b in got.items()) >= ref_val - 1e-9
