import pytest

from mixbits.methods import allocate

from ._method_helpers import tiny_context


@pytest.mark.parametrize("target", ["4x", "8x", "16x", "28x"])
def test_uniform_picks_the_largest_fitting_k(target):
    ctx, space = tiny_context(target)
    bits = allocate("uniform", ctx).bits
    ks = set(bits.values())
    assert len(ks) == 1
    k = ks.pop()
    assert space.cost.quantized_bits(bits) <= ctx.budget_bits
    larger = [b for b in space.layers[0].candidates if b > k]
    for b in larger:  # every larger uniform k overspends
        assert space.cost.quantized_bits({n: b for n in bits}) > ctx.budget_bits


def test_uniform_given_bits_and_pins():
    ctx, space = tiny_context("8x", options={"bits": 2}, pins={"5": 8})
    bits = allocate("uniform", ctx).bits
    assert bits == {"0": 2, "3": 2, "5": 8}
    assert space.cost.quantized_bits(bits) <= ctx.budget_bits


def test_uniform_given_bits_over_budget_is_an_error():
    ctx, _ = tiny_context("16x", options={"bits": 8})
    with pytest.raises(ValueError, match="over the budget"):
        allocate("uniform", ctx)


def test_uniform_unknown_option():
    ctx, _ = tiny_context("16x", options={"k": 2})
    with pytest.raises(ValueError, match="known: bits"):
        allocate("uniform", ctx)
