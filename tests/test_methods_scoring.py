"""HeldOutScorer: the cross-entropy and KL objectives, memoising, and the float predictions it keeps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mixbits.methods.scoring import HeldOutScorer

from ._method_helpers import tiny_context


def _scorer(objective: str):
    ctx, space = tiny_context("16x")
    return HeldOutScorer(ctx.model, space, ctx.loaders["held_out"], images=48, bn_images=16, objective=objective), space


def test_kl_of_the_float_assignment_is_zero_and_grows_with_fewer_bits():
    scorer, space = _scorer("kl")
    floats = {n: 32 for n in space.names}
    assert scorer.loss(floats) == pytest.approx(0.0, abs=1e-6)
    binary = {n: 1 for n in space.names}
    four = {n: 4 for n in space.names}
    assert scorer.loss(binary) > scorer.loss(four) > 0.0


def test_kl_matches_a_manual_computation_and_leaves_the_model_as_it_was():
    scorer, space = _scorer("kl")
    bits = {n: 2 for n in space.names}
    before = [d.fixed_bits for d in space.decision_list]
    got = scorer.loss(bits)
    # the scorer fixed the model at ``bits``: recompute by hand on the same images
    with torch.no_grad():
        space.fix_(bits)
        out = scorer.model(scorer.x)
        space.fix_({n: 32 for n in space.names})
        ref = scorer.model(scorer.x)
    manual = float(F.kl_div(F.log_softmax(out, 1), F.log_softmax(ref, 1), reduction="sum", log_target=True)) / 48
    assert got == pytest.approx(manual, rel=1e-4)
    assert before == [None] * len(before)  # the float predictions did not leave layers fixed


def test_ce_is_the_mean_cross_entropy_and_scores_are_memoised():
    scorer, space = _scorer("ce")
    bits = {n: 4 for n in space.names}
    first = scorer.loss(bits)
    with torch.no_grad():
        space.fix_(bits)
        manual = float(F.cross_entropy(scorer.model(scorer.x), scorer.y))
    assert first == pytest.approx(manual, rel=1e-5)
    n = scorer.evaluations
    assert scorer.loss(bits) == first and scorer.evaluations == n
    assert scorer.info()["objective"] == "ce"


def test_an_unknown_objective_fails_before_any_work():
    ctx, space = tiny_context("16x")
    with pytest.raises(ValueError, match="objective must be one of ce, kl"):
        HeldOutScorer(ctx.model, space, ctx.loaders["held_out"], objective="mse")
