import itertools

import pytest

import mixbits.methods.pairwise as pairwise_module
from mixbits.methods import allocate
from mixbits.methods.pairwise import kept_candidates, layer_pairs

from ._method_helpers import tiny_context


class FakeScorer:
    """A held-out loss that is exactly single terms plus one pair term, counted like the real scorer."""

    weights = {"0": 1.0, "3": 3.0, "5": 2.0}
    pair: dict = {}

    def __init__(self, model, space, loader, *, images, bn_images, device, loss_fn=None):
        self.evaluations = 0
        self.seen: set = set()

    def loss(self, bits, images=None):
        key = tuple(sorted(bits.items()))
        if key not in self.seen:
            self.seen.add(key)
            self.evaluations += 1
        return (sum(self.weights[n] / b for n, b in bits.items())
                + self.pair.get((bits["0"], bits["5"]), 0.0))

    def info(self):
        return {"evaluations": self.evaluations}


def _brute(space, budget, loss):
    costs = space.cost.cost_table()
    names = list(costs)
    fits = [dict(zip(names, c)) for c in itertools.product(*[sorted(costs[n]) for n in names])
            if sum(costs[n][b] for n, b in zip(names, c)) <= budget]
    return min(fits, key=lambda bits: (loss(bits), -sum(costs[n][b] for n, b in bits.items())))


def _tight_context(options):
    """The tiny model at a budget where layers 0 and 5 compete for the bits left by layer 3 at 1 bit."""
    ctx, space = tiny_context("16x", options={"window": 5, **options})
    costs = space.cost.cost_table()
    ctx.budget_bits = costs["3"][1] + costs["0"][8] + costs["5"][2]
    return ctx, space


def test_a_pair_term_changes_the_solution(monkeypatch):
    monkeypatch.setattr(pairwise_module, "HeldOutScorer", FakeScorer)
    monkeypatch.setattr(FakeScorer, "pair", {})
    ctx, space = _tight_context({"interactions": False})
    single = allocate("pairwise", ctx).bits
    scorer = FakeScorer(None, None, None, images=0, bn_images=0, device=None)
    assert single == _brute(space, ctx.budget_bits, scorer.loss)  # exact when the loss has no interaction
    # the single-layer optimum's pair (layers 0 and 5) now costs 10 more: single scores mislead
    monkeypatch.setattr(FakeScorer, "pair", {(single["0"], single["5"]): 10.0})
    ctx, space = _tight_context({"interactions": False})
    assert allocate("pairwise", ctx).bits == single
    ctx, space = _tight_context({"pairs": "all"})
    res = allocate("pairwise", ctx)
    assert res.bits != single
    assert res.bits == _brute(space, ctx.budget_bits, scorer.loss)
    # 896 bits left by layer 3 at 1 bit: (2, 8) and (4, 4) both model 1/2 + 2/8 = 1/4 + 2/4; the fuller wins
    assert single == {"0": 2, "3": 1, "5": 8}
    assert res.bits == {"0": 4, "3": 1, "5": 4}
    # every evaluation is counted: one per non-reference candidate of each layer, one per kept pair
    assert res.info["single_evaluations"] == 3 * 5
    kept = res.info["kept_candidates"]
    assert res.info["pair_evaluations"] == sum(len([a for a in kept[u] if a != 32]) * len([b for b in kept[v] if b != 32])
                                               for u, v in layer_pairs(["0", "3", "5"], "all"))


def test_neighbour_pairs_miss_a_distant_interaction(monkeypatch):
    # layers 0 and 5 are not neighbours (3 lies between): "neighbours" does not see their interaction
    monkeypatch.setattr(pairwise_module, "HeldOutScorer", FakeScorer)
    monkeypatch.setattr(FakeScorer, "pair", {(2, 8): 10.0})
    ctx, _ = _tight_context({"pairs": "neighbours"})
    res = allocate("pairwise", ctx)
    assert res.info["pairs"] == 2
    assert res.bits == {"0": 2, "3": 1, "5": 8}


def test_kept_candidates_and_pairs():
    costs = {"a": {1: 1, 2: 2, 4: 4, 8: 8, 16: 16}, "b": {1: 10, 2: 20, 4: 40, 8: 80}, "p": {8: 3}}
    # window 1 around a=4 and b=2; b at 8 could not fit with a at its smallest (80 + 1 + 3 > 60)
    assert kept_candidates(costs, {"a": 4, "b": 4, "p": 8}, 1, 60) == {"a": [2, 4, 8], "b": [2, 4], "p": [8]}
    assert kept_candidates(costs, {"a": 1, "b": 1, "p": 8}, 0, 60) == {"a": [1], "b": [1], "p": [8]}
    assert layer_pairs(["a", "b", "c"], "neighbours") == [("a", "b"), ("b", "c")]
    assert layer_pairs(["a", "b", "c"], "all") == [("a", "b"), ("a", "c"), ("b", "c")]
    assert len(layer_pairs([str(i) for i in range(8)], "auto")) == 28
    assert len(layer_pairs([str(i) for i in range(9)], "auto")) == 8


@pytest.mark.parametrize("options", [{}, {"interactions": False}, {"pairs": "neighbours", "window": 1}])
@pytest.mark.parametrize("target", ["8x", "16x"])
def test_pairwise_meets_the_budget_with_valid_candidates(options, target):
    ctx, space = tiny_context(target, options={"images": 64, **options})
    res = allocate("pairwise", ctx)
    assert space.cost.quantized_bits(res.bits) <= ctx.budget_bits
    for layer in space.layers:
        assert res.bits[layer.name] in res.info["kept_candidates"][layer.name]
    window = options.get("window", 2)
    assert res.info["pair_evaluations"] <= res.info["pairs"] * (2 * window + 1) ** 2
    assert res.info["single_evaluations"] == sum(len(layer.candidates) - 1 for layer in space.layers)
    if options.get("interactions") is False:
        assert res.bits == space.cost.to_layers(res.info["single_layer_bits"])


@pytest.mark.parametrize("options, match", [
    ({"speed": 1}, "unknown options"),
    ({"pairs": "some"}, "pairs must be"),
    ({"window": -1}, "window must be >= 0"),
])
def test_bad_options_fail_before_any_work(options, match):
    ctx, _ = tiny_context("16x", options=options)
    with pytest.raises(ValueError, match=match):
        allocate("pairwise", ctx)


def test_bits_per_structure_are_refused():
    ctx, _ = tiny_context("16x", granularity="group:4")
    with pytest.raises(ValueError, match="bits per structure are not supported"):
        allocate("pairwise", ctx)
