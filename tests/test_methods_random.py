import itertools
from collections import Counter

import pytest

from mixbits.methods import allocate
from mixbits.methods.random import random_bits

from ._method_helpers import tiny_context


@pytest.mark.parametrize("target", ["6x", "16x", "28x"])
def test_random_fits_the_budget(target):
    ctx, space = tiny_context(target)
    bits = allocate("random", ctx).bits
    assert space.cost.quantized_bits(bits) <= ctx.budget_bits


def test_random_is_seeded_and_differs_across_seeds():
    draws = [allocate("random", tiny_context("24x", seed=s, options={"band": 0.5})[0]).bits for s in range(8)]
    assert draws[0] == allocate("random", tiny_context("24x", seed=0, options={"band": 0.5})[0]).bits
    assert len({tuple(sorted(d.items())) for d in draws}) > 1


def test_random_is_uniform_over_the_band():
    # Brute force: every assignment with size in [lo, budget] must be drawn about equally often.
    costs = {"a": {1: 10, 2: 20, 4: 40}, "b": {1: 30, 2: 60, 4: 120}, "c": {1: 5, 8: 40}}
    budget, band = 150, 0.5
    allowed = [combo for combo in itertools.product(*[sorted(costs[n].items()) for n in costs])
               if (1 - band) * budget <= sum(c for _, c in combo) <= budget]
    expected = {tuple(b for b, _ in combo) for combo in allowed}
    n = 3000
    seen = Counter(tuple(random_bits(costs, budget, s, band=band).values()) for s in range(n))
    assert set(seen) == expected
    for k in expected:
        assert seen[k] == pytest.approx(n / len(expected), rel=0.25)


def test_random_band_is_validated():
    with pytest.raises(ValueError, match="band"):
        random_bits({"a": {1: 1}}, 5, 0, band=0.0)
