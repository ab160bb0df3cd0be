import pytest
import torch

from mixbits.methods import allocate
from mixbits.methods.exhaustive import enumerate_assignments
from mixbits.methods.refine import ball, refine
from mixbits.methods.scoring import HeldOutScorer

from ._method_helpers import tiny_context
from .test_methods_exhaustive import _brute_maximal, _deep_model, _key

# one wide layer and three narrow ones; a step of the wide one costs as much as a step of all three narrow ones
COSTS = {"wide": {1: 30, 2: 60}, "a": {1: 10, 2: 20}, "b": {1: 10, 2: 20}, "c": {1: 10, 2: 20},
         "d": {1: 10, 2: 20}}


class TableScorer:
    """A loss known in closed form (a penalty per unit at 1 bit, plus one interaction), the image counts it
    was asked for recorded."""

    def __init__(self, penalty, images=64, calls=None):
        self.penalty, self.y, self.evaluations = penalty, torch.zeros(images), 0
        self.calls = [] if calls is None else calls

    def subset(self, images):
        return TableScorer(self.penalty, images, self.calls)

    def loss(self, bits, images=None):
        self.calls.append(len(self.y))
        self.evaluations += 1
        loss = sum(self.penalty[n] for n, b in bits.items() if b == 1)
        return loss + (0.5 if bits["a"] == bits["b"] == 1 else 0.0)  # a and b narrow together cost more

    def info(self):
        return {"evaluations": self.evaluations}


def test_a_ball_over_the_limit_shrinks():
    centre = {"wide": 1, "a": 2, "b": 2, "c": 2, "d": 2}  # 110 bits
    assert len(ball(COSTS, 110, centre, 4, 100)[0]) == len(_brute_maximal(COSTS, 110))
    sizes = {r: len(enumerate_assignments(COSTS, 110, 100, near=(centre, r))) for r in (1, 2, 3, 4)}
    assert sizes == {1: 1, 2: 1, 3: 1, 4: 5}  # the centre alone, until the wide layer can widen
    space, r = ball(COSTS, 110, centre, 4, 4)  # 5 within 4 layers: too many; the centre within 3
    assert r == 3 and space == [centre]
    assert ball(COSTS, 110, centre, 4, 0) == ([], 0)


def test_one_wide_layer_up_paid_by_three_narrow_ones_down():
    """The move the exhaustive optimum makes on ResNet-20 at 28x: four layers at once. Within two layers of the
    start nothing is better; within four the best assignment of the whole space is found."""
    scorer = TableScorer({"wide": 1.0, "a": 0.15, "b": 0.1, "c": 0.2, "d": 0.3})
    start = {"wide": 1, "a": 2, "b": 2, "c": 2, "d": 2}  # 110 bits, loss 1.0
    assert refine(scorer, COSTS, 110, start, radius=2, screen=0)[0] == start
    units, history = refine(scorer, COSTS, 110, start, radius=4, screen=0)
    every = _brute_maximal(COSTS, 110)
    assert units == min(every, key=scorer.loss) == {"wide": 2, "a": 2, "b": 1, "c": 1, "d": 1}
    assert [h["loss"] for h in history] == pytest.approx([1.0, 0.6])  # b, c, d at 1 bit: 0.1 + 0.2 + 0.3
    assert history[0]["radius"] == 4 and history[0]["assignments"] == 5


def test_every_move_lowers_the_loss_and_stays_in_the_budget():
    costs = {f"l{i}": {b: (i + 2) * b for b in (1, 2, 4, 8)} for i in range(6)}
    for trial in range(20):
        g = torch.Generator().manual_seed(trial)
        weight = torch.rand(6, 4, generator=g)

        def loss(bits, images=None, weight=weight):
            e = [weight[i, [1, 2, 4, 8].index(bits[f"l{i}"])].item() / bits[f"l{i}"] for i in range(6)]
            return sum(e) + sum(e[i] * e[i + 1] for i in range(5))

        scorer = TableScorer({})
        scorer.loss = loss
        budget = 60 + 7 * trial
        every = enumerate_assignments(costs, budget, 10 ** 6)
        start = every[trial % len(every)]
        units, history = refine(scorer, costs, budget, start, radius=2, rounds=10, screen=0)
        losses = [h["loss"] for h in history]
        assert all(later < earlier for earlier, later in zip(losses, losses[1:]))
        assert sum(costs[n][b] for n, b in units.items()) <= budget
        assert loss(units) == losses[-1] <= loss(start)
        if len(history) < 11:  # it stopped: nothing within two layers of its answer is better
            near = enumerate_assignments(costs, budget, 10 ** 6, near=(units, 2))
            assert min(map(loss, near)) >= losses[-1]


def test_screening_races_on_the_subsets_and_moves_on_all_images():
    scorer = TableScorer({"wide": 1.0, "a": 0.15, "b": 0.1, "c": 0.2, "d": 0.3}, images=256)
    start = {"wide": 1, "a": 2, "b": 2, "c": 2, "d": 2}
    units, history = refine(scorer, COSTS, 110, start, screen=16, keep=2)
    assert units == {"wide": 2, "a": 2, "b": 1, "c": 1, "d": 1}
    assert history[0]["rounds"] == [{"assignments": 5, "images": 16}]  # the best two go on to all 256
    assert scorer.calls[0] == 256 and {16, 256} == set(scorer.calls)


def test_the_allocation_starts_from_its_start_method_and_never_does_worse():
    ctx, space = tiny_context("16x", options={"images": 64, "screen": 0})
    result = allocate("refine", ctx)
    hessian = allocate("hessian", tiny_context("16x")[0])
    scorer = HeldOutScorer(ctx.model, space, ctx.loaders["held_out"], images=64, bn_images=64)
    start = space.cost.to_units(hessian.bits)
    assert result.info["start_bits"] == start
    end = space.cost.to_units(result.bits)
    assert scorer.loss(end) <= scorer.loss(start)
    assert result.info["balls"][-1]["loss"] == pytest.approx(scorer.loss(end), abs=1e-6)
    space.unfix_()
    assert space.cost.quantized_bits(result.bits) <= ctx.budget_bits


@pytest.mark.parametrize("options, match", [
    ({"radius": 0}, "radius must be an integer >= 1"),
    ({"limit": 1.5}, "limit must be an integer >= 1"),
    ({"rounds": -1}, "rounds must be an integer >= 0"),
    ({"screen": -1}, "screen must be an integer >= 0"),
    ({"images": True}, "images must be an integer >= 1"),
    ({"start": "refine"}, "start must name another registered method"),
    ({"start": "nosuch"}, "nosuch"),
    ({"band": 0.9}, "unknown options"),
])
def test_bad_options_fail_before_any_work(options, match):
    ctx, _ = tiny_context("8x", options=options)
    with pytest.raises(ValueError, match=match):
        allocate("refine", ctx)



def test_a_later_ball_reuses_the_screening_scores_of_the_earlier_ones(monkeypatch):
    """One screening scorer per image count for the whole search, memoising: an assignment screened around one
    centre is not evaluated again around the next, so a later ball costs only its new assignments."""
    ctx, space = tiny_context("12x", model=_deep_model())
    made = []
    original = HeldOutScorer.subset

    def recording(self, images):
        sub = original(self, images)
        made.append(sub)
        return sub

    monkeypatch.setattr(HeldOutScorer, "subset", recording)
    scorer = HeldOutScorer(ctx.model, space, ctx.loaders["held_out"], images=64, bn_images=64)
    costs = space.cost.cost_table()
    start = enumerate_assignments(costs, ctx.budget_bits, 10 ** 6)[-1]
    units, history = refine(scorer, costs, ctx.budget_bits, start, radius=2, screen=8, keep=1, rounds=5)
    screened = [h for h in history if h.get("rounds")]
    assert len(screened) >= 2  # at least two balls were raced with screening
    balls = [{_key(a) for a in enumerate_assignments(costs, ctx.budget_bits, 10 ** 6, near=(h["bits"], 2))}
             for h in screened]
    assert len(made) == 1  # one scorer on 8 images for every round
    assert made[0].evaluations == len(set().union(*balls)) < sum(map(len, balls))
