import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixbits.methods.exhaustive as exhaustive_module
from mixbits.methods import allocate
from mixbits.methods.exhaustive import TooManyAssignments, enumerate_assignments
from mixbits.methods.scoring import HeldOutScorer

from ._method_helpers import tiny_context


def _brute_maximal(costs, budget):
    """Every assignment within the budget that no single wider candidate of one layer still fits."""
    names = sorted(costs)
    out = []
    for combo in itertools.product(*[sorted(costs[n]) for n in names]):
        a = dict(zip(names, combo))
        slack = budget - sum(costs[n][a[n]] for n in names)
        if slack >= 0 and all(costs[n][b] - costs[n][a[n]] > slack for n in names for b in costs[n] if b > a[n]):
            out.append(a)
    return out


def _brute_band(costs, budget, band):
    names = sorted(costs)
    combos = (dict(zip(names, c)) for c in itertools.product(*[sorted(costs[n]) for n in names]))
    return [a for a in combos if math.ceil(band * budget) <= sum(costs[n][a[n]] for n in names) <= budget]


def _key(a):
    return tuple(sorted(a.items()))


def _deep_model() -> nn.Module:
    """Five layers of similar size: many maximal assignments (65 at 8x, 18 at 12x)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 12),
                         nn.ReLU(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, 4))


def test_the_enumeration_is_every_maximal_assignment_once_also_near_a_centre():
    rng = random.Random(0)
    for _ in range(200):
        costs = {}
        for layer in range(rng.randint(1, 5)):
            width = rng.randint(1, 50)
            costs[f"l{layer}"] = {b: width * b + 3 for b in rng.sample([1, 2, 4, 8, 16, 32], rng.randint(1, 4))}
        low = sum(min(c.values()) for c in costs.values())
        high = sum(max(c.values()) for c in costs.values())
        budget = rng.randint(low - 5, high + 5)
        got = enumerate_assignments(costs, budget, 10 ** 6)
        assert len({_key(a) for a in got}) == len(got)
        assert sorted(map(_key, got)) == sorted(map(_key, _brute_maximal(costs, budget)))
        # near a centre (refine's balls): the maximal assignments that differ from it in at most r layers
        centre, radius = {n: rng.choice(sorted(c)) for n, c in costs.items()}, rng.randint(1, 4)
        want = [a for a in _brute_maximal(costs, budget) if sum(a[n] != centre[n] for n in a) <= radius]
        got = enumerate_assignments(costs, budget, 10 ** 6, near=(centre, radius))
        assert sorted(map(_key, got)) == sorted(map(_key, want)) and len({_key(a) for a in got}) == len(got)
        band = rng.choice([0.5, 0.85, 1.0])
        got = enumerate_assignments(costs, budget, 10 ** 6, band=band)
        assert len({_key(a) for a in got}) == len(got)
        assert sorted(map(_key, got)) == sorted(map(_key, _brute_band(costs, budget, band)))


def test_a_known_space():
    costs = {"a": {1: 10, 2: 20, 4: 40}, "b": {1: 5, 2: 10, 4: 20}}
    # at 45 bits: a2+b4 = 40 (a4 would need 20 more, b is at its widest) and a4+b1 = 45; a2+b2 = 30 is not
    # maximal (b4 still fits), a1+b4 = 30 neither (a2 fits)
    assert sorted(map(_key, enumerate_assignments(costs, 45, 100))) == [(("a", 2), ("b", 4)), (("a", 4), ("b", 1))]
    assert enumerate_assignments(costs, 40, 100) == [{"a": 2, "b": 4}]
    assert enumerate_assignments(costs, 14, 100) == []  # nothing fits
    assert enumerate_assignments({}, 0, 100) == [{}]
    # every assignment using 75-100% of 40 bits: a1+b4 (30), a2+b2 (30), a2+b4 (40); a2+b1 (25) is below
    assert sorted(map(_key, enumerate_assignments(costs, 40, 100, band=0.75))) == [
        (("a", 1), ("b", 4)), (("a", 2), ("b", 2)), (("a", 2), ("b", 4))]


def test_too_many_assignments_fail_before_any_scoring(monkeypatch):
    def no_scorer(*args, **kwargs):
        raise AssertionError("scored before the enumeration was known to fit the limit")

    monkeypatch.setattr(exhaustive_module, "HeldOutScorer", no_scorer)
    ctx, _ = tiny_context("8x", options={"limit": 2}, model=_deep_model())
    with pytest.raises(TooManyAssignments, match="more than 2 maximal assignments.*raise the option 'limit'"):
        allocate("exhaustive", ctx)
    ctx, _ = tiny_context("8x", options={"limit": 2, "band": 0.5}, model=_deep_model())
    with pytest.raises(TooManyAssignments, match="more than 2 assignments using 50%-100% of the budget"):
        allocate("exhaustive", ctx)


class FakeScorer:
    """A loss known in closed form, with screening noise that depends on the number of images."""

    calls: list = []

    def __init__(self, model=None, space=None, loader=None, *, images=1024, bn_images=512, device=None, loss_fn=None):
        self.y = torch.zeros(images)
        self.evaluations = 0

    @staticmethod
    def true_loss(bits):
        return sum((i % 3 + 1) / b for i, (_, b) in enumerate(sorted(bits.items())))

    def subset(self, images):
        sub = FakeScorer(images=images)
        return sub

    def loss(self, bits, images=None):
        FakeScorer.calls.append(len(self.y))
        self.evaluations += 1
        noise = 0.05 * (sum(b * (i + 1) for i, (_, b) in enumerate(sorted(bits.items()))) % 5) / len(self.y) ** 0.5
        return self.true_loss(bits) + noise

    def info(self):
        return {"evaluations": self.evaluations}


def test_the_race_keeps_the_best_and_scores_it_on_every_image(monkeypatch):
    monkeypatch.setattr(exhaustive_module, "HeldOutScorer", FakeScorer)
    ctx, space = tiny_context("8x", options={"keep": 2, "screen": 4, "images": 256}, model=_deep_model())
    costs = space.cost.cost_table()
    every = enumerate_assignments(costs, ctx.budget_bits, 10 ** 6)
    assert len(every) == 65
    want = min(every, key=lambda a: FakeScorer(images=256).loss(a))
    FakeScorer.calls = []
    result = allocate("exhaustive", ctx)
    assert result.bits == space.cost.to_layers(want)
    # 65 on 4 images, the best 9 (an eighth, rounded up) on 16, the best 2 (keep) on all 256
    assert result.info["rounds"] == [{"assignments": 65, "images": 4}, {"assignments": 9, "images": 16}]
    assert FakeScorer.calls.count(256) == 2 + 1  # the two survivors, then the winner's loss again for the info
    assert result.info["rescored"] == 2


def test_without_screening_every_assignment_is_scored_on_every_image(monkeypatch):
    monkeypatch.setattr(exhaustive_module, "HeldOutScorer", FakeScorer)
    ctx, space = tiny_context("8x", options={"screen": 0, "images": 256}, model=_deep_model())
    FakeScorer.calls = []
    result = allocate("exhaustive", ctx)
    assert FakeScorer.calls == [256] * (65 + 1)
    assert result.info["rounds"] == [] and result.info["rescored"] == 65


def test_the_real_scorer_finds_the_brute_force_optimum():
    """No screening: the answer is the maximal assignment of least held-out loss, checked one by one."""
    ctx, space = tiny_context("12x", options={"screen": 0, "images": 64}, model=_deep_model())
    result = allocate("exhaustive", ctx)
    scorer = HeldOutScorer(ctx.model, space, ctx.loaders["held_out"], images=64, bn_images=64)
    every = enumerate_assignments(space.cost.cost_table(), ctx.budget_bits, 10 ** 6)
    assert len(every) == 18
    losses = [scorer.loss(a) for a in every]
    space.unfix_()
    assert result.bits == space.cost.to_layers(every[losses.index(min(losses))])
    assert result.info["held_out_loss"] == pytest.approx(min(losses), abs=1e-6)
    assert space.cost.quantized_bits(result.bits) <= ctx.budget_bits


@pytest.mark.parametrize("options, match", [
    ({"limit": 0}, "limit must be an integer >= 1"),
    ({"screen": -1}, "screen must be an integer >= 0"),
    ({"keep": 1.5}, "keep must be an integer >= 1"),
    ({"images": True}, "images must be an integer >= 1"),
    ({"rounds": 3}, "unknown options"),
    ({"band": 0}, "band must be a fraction of the budget"),
    ({"band": 1.5}, "band must be a fraction of the budget"),
])
def test_bad_options_fail_before_any_work(options, match):
    ctx, _ = tiny_context("8x", options=options)
    with pytest.raises(ValueError, match=match):
        allocate("exhaustive", ctx)


@pytest.mark.parametrize("method", ["exhaustive", "refine"])
def test_bits_per_structure_are_refused(method):
    ctx, _ = tiny_context("8x", granularity="channel")
    with pytest.raises(ValueError, match="granularity 'layer'"):
        allocate(method, ctx)
