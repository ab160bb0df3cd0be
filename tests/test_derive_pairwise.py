import itertools
import random

import pytest

from mixbits.derive import InfeasibleError, solve_budget
from mixbits.derive_pairwise import pairwise_objective, solve_pairwise_budget


def _brute(losses, pairs, costs, budget):
    names = list(losses)
    best = None
    for combo in itertools.product(*[sorted(losses[n]) for n in names]):
        bits = dict(zip(names, combo))
        if sum(costs[n][b] for n, b in bits.items()) > budget:
            continue
        key = (pairwise_objective(bits, losses, pairs), -sum(costs[n][b] for n, b in bits.items()))
        if best is None or key < best[0]:
            best = (key, bits)
    return best[1]


def _instance(seed, units=4, with_pairs=True):
    rng = random.Random(seed)
    cands = [1, 2, 4, 8]
    costs = {f"u{i}": {b: b * rng.randint(5, 50) + 3 for b in cands} for i in range(units)}
    losses = {u: {b: round(rng.uniform(0, 1) / b, 4) for b in rng.sample(cands, 3)} for u in costs}
    pairs = {}
    if with_pairs:
        for u, v in itertools.combinations(costs, 2):
            pairs[(u, v)] = {(a, b): round(rng.uniform(-0.3, 0.3), 4) for a in losses[u] for b in losses[v]
                             if rng.random() < 0.7}
    small = sum(min(costs[u][b] for b in losses[u]) for u in costs)
    big = sum(max(costs[u][b] for b in losses[u]) for u in costs)
    return losses, pairs, costs, (small + big) // 2


@pytest.mark.parametrize("seed", range(12))
def test_the_quadratic_assignment_matches_brute_force(seed):
    losses, pairs, costs, budget = _instance(seed)
    got = solve_pairwise_budget(losses, pairs, costs, budget)
    want = _brute(losses, pairs, costs, budget)
    assert sum(costs[u][b] for u, b in got.items()) <= budget
    assert pairwise_objective(got, losses, pairs) == pytest.approx(pairwise_objective(want, losses, pairs), abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_without_pairs_it_is_the_knapsack(seed):
    losses, _, costs, budget = _instance(seed, units=5, with_pairs=False)
    restricted = {u: {b: costs[u][b] for b in losses[u]} for u in losses}
    got = solve_pairwise_budget(losses, {}, restricted, budget)
    want = solve_budget({u: {b: -v for b, v in per.items()} for u, per in losses.items()}, restricted, budget)
    assert pairwise_objective(got, losses, {}) == pytest.approx(pairwise_objective(want, losses, {}), abs=1e-9)


def test_an_interaction_changes_the_answer():
    costs = {"a": {1: 1, 2: 2}, "b": {1: 1, 2: 2}}
    losses = {"a": {1: 1.0, 2: 0.0}, "b": {1: 1.1, 2: 0.0}}
    assert solve_pairwise_budget(losses, {}, costs, 3) == {"a": 1, "b": 2}
    # a at 1 together with b at 2 costs 0.5 more than their sum: (2, 1) is now the better pair
    assert solve_pairwise_budget(losses, {("a", "b"): {(1, 2): 0.5}}, costs, 3) == {"a": 2, "b": 1}
    # a negative interaction (the errors cancel) makes a pair preferred
    assert solve_pairwise_budget({"a": {1: 0.0, 2: 0.0}, "b": {1: 0.2, 2: 0.1}}, {("a", "b"): {(2, 1): -0.5}},
                                 costs, 3) == {"a": 2, "b": 1}


def test_bad_input():
    costs = {"a": {1: 1, 2: 2}}
    with pytest.raises(ValueError, match="not an allowed candidate pair"):
        solve_pairwise_budget({"a": {1: 0.0}, "b": {1: 0.0}}, {("a", "b"): {(2, 1): 1.0}},
                              {"a": {1: 1, 2: 2}, "b": {1: 1}}, 5)
    with pytest.raises(InfeasibleError):
        solve_pairwise_budget({"a": {2: 0.0}}, {}, costs, 1)
