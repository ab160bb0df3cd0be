import itertools

import numpy as np
import pytest
import torch

import mixbits.mixture as mixture
from mixbits.derive import solve_budget
from mixbits.methods import allocate
from mixbits.methods.fracbits import (_derive, distance_scores, interpolated_sizes, project_positions,
                                      uniform_position)
from mixbits.mixture import Decision
from mixbits.quant import quantize_hard

from ._method_helpers import tiny_context

CANDS = (1, 2, 4, 8, 16, 32)


def _counting_quantizer(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = mixture.quantize_hard

    def counted(w, bits, channel_dim=0):
        calls.append(bits)
        return real(w, bits, channel_dim)

    monkeypatch.setattr(mixture, "quantize_hard", counted)
    return calls


def test_the_interpolation_touches_only_the_two_nearest_candidates(monkeypatch):
    calls = _counting_quantizer(monkeypatch)
    d = Decision(CANDS)
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    r = torch.tensor(1.25, requires_grad=True)
    out = d.interpolated_weight(w, r)
    assert sorted(calls) == [2, 4]  # candidates 1 and 2 (positions), nothing else quantized
    q2, q4 = quantize_hard(w, 2), quantize_hard(w, 4)
    torch.testing.assert_close(out, 0.75 * q2 + 0.25 * q4)
    g = torch.randn_like(w)
    (out * g).sum().backward()
    torch.testing.assert_close(r.grad, ((q4 - q2) * g).sum())  # dL/dr = <dL/dW, Q_hi - Q_lo>
    d.interpolated_weight(w, torch.tensor(1.75))
    assert sorted(calls) == [2, 4]  # cached: the frozen weight's two quantizers are computed once


def test_the_last_position_is_the_last_candidate_and_integers_are_exact():
    d = Decision(CANDS)
    w = torch.randn(4, 3)
    torch.testing.assert_close(d.interpolated_weight(w, torch.tensor(5.0)), w)  # 32 bits: the float weight
    torch.testing.assert_close(d.interpolated_weight(w, torch.tensor(2.0)), quantize_hard(w, 4))
    with pytest.raises(ValueError, match="two or more candidates"):
        Decision((4,)).interpolated_weight(w, torch.tensor(0.0))


def test_the_decision_uses_its_position_in_the_forward():
    d = Decision(CANDS)
    w = torch.randn(4, 3)
    d.position = torch.tensor(0.5)
    torch.testing.assert_close(d.mixed_weight(w), 0.5 * quantize_hard(w, 1) + 0.5 * quantize_hard(w, 2))
    d.fixed_bits = 8  # fixed bits win over a position
    torch.testing.assert_close(d.mixed_weight(w), quantize_hard(w, 8))


SIZES = np.array([[10.0, 20.0, 40.0], [100.0, 200.0, 400.0]])  # (L=2, K=3)


def test_interpolated_sizes_are_linear_between_candidates():
    np.testing.assert_allclose(interpolated_sizes(np.array([0.5, 2.0]), SIZES), [15.0, 400.0])
    np.testing.assert_allclose(interpolated_sizes(np.array([1.0, 1.25]), SIZES), [20.0, 250.0])


@pytest.mark.parametrize("u", [(2.0, 2.0), (1.7, 0.3), (-1.0, 5.0), (0.2, 0.1)])
def test_the_projection_is_the_nearest_point_within_the_budget(u):
    budget = 260.0
    u = np.array(u)
    r, mu = project_positions(u, SIZES, budget)
    assert interpolated_sizes(r, SIZES).sum() <= budget + 1e-9
    assert np.all((r >= 0) & (r <= 2))
    # brute force: the nearest point of a fine grid of the feasible set
    axis = np.linspace(0, 2, 401)
    per_layer = [interpolated_sizes(axis, np.repeat(SIZES[i:i + 1], len(axis), axis=0))
                 for i in range(2)]  # (401,) each: a layer's size along the grid
    grid = np.array(list(itertools.product(axis, repeat=2)))  # (401^2, 2)
    total = np.add.outer(per_layer[0], per_layer[1]).reshape(-1)
    feasible = grid[total <= budget]
    best = np.min(np.linalg.norm(feasible - u, axis=1))
    assert np.linalg.norm(r - u) <= best + 1e-9
    assert np.linalg.norm(r - u) >= best - 0.01  # the grid's spacing is 0.005
    if interpolated_sizes(np.clip(u, 0, 2), SIZES).sum() <= budget:
        assert mu == 0.0 and np.allclose(r, np.clip(u, 0, 2))
    else:  # binding: the interpolated size meets the budget
        assert mu > 0 and interpolated_sizes(r, SIZES).sum() == pytest.approx(budget, rel=1e-9)


def test_the_projection_respects_a_layer_with_fewer_candidates():
    sizes = np.array([[10.0, 20.0, 20.0], [100.0, 200.0, 400.0]])  # the first layer has 2 candidates
    r, _ = project_positions(np.array([2.0, 2.0]), sizes, 1000.0, top=np.array([1.0, 2.0]))
    np.testing.assert_allclose(r, [1.0, 2.0])
    with pytest.raises(ValueError, match="below the smallest reachable size"):
        project_positions(np.array([0.0, 0.0]), sizes, 50.0)


def test_the_uniform_start_spends_the_budget():
    r = uniform_position(SIZES, 260.0)
    assert r[0] == r[1]
    assert interpolated_sizes(r, SIZES).sum() == pytest.approx(260.0, rel=1e-9)
    np.testing.assert_allclose(uniform_position(SIZES, 1e6), [2.0, 2.0])


def test_the_knapsack_follows_the_learned_positions():
    assert distance_scores(1.25, 3) == [-1.25, -0.25, -0.75]
    costs = {"a": {1: 10, 2: 20, 4: 40}, "b": {1: 100, 2: 200, 4: 400}, "pin": {8: 5}}
    pos = [torch.tensor(1.9), torch.tensor(0.6)]
    # the nearest candidates (4, 2) fit: 40 + 200 + 5
    assert _derive(["a", "b"], pos, costs, 250) == {"a": 4, "b": 2, "pin": 8}
    # 244 does not fit them: b rounds down (distances 0.1 + 0.6) rather than a (0.9 + 0.4)
    assert _derive(["a", "b"], pos, costs, 244) == {"a": 4, "b": 1, "pin": 8}
    # with b nearer its upper candidate, a rounds down instead (0.9 + 0.1 < 0.1 + 0.9)
    assert _derive(["a", "b"], [torch.tensor(1.9), torch.tensor(0.9)], costs, 244) == {"a": 2, "b": 2, "pin": 8}


@pytest.mark.parametrize("options", [
    {"steps": 12, "images": 64, "batch": 16},
    {"steps": 12, "images": 64, "batch": 16, "init": "hessian"},
    {"steps": 12, "images": 64, "batch": 16, "hessian_candidate": False},
    {"steps": 12, "images": 64, "batch": 16, "select": False},
])
@pytest.mark.parametrize("target", ["8x", "16x"])
def test_fracbits_meets_the_budget_with_valid_candidates(options, target):
    ctx, space = tiny_context(target, options=options)
    grads = [p.requires_grad for p in ctx.model.parameters()]
    res = allocate("fracbits", ctx)
    assert space.cost.quantized_bits(res.bits) <= ctx.budget_bits
    for layer in space.layers:
        assert res.bits[layer.name] in layer.candidates
    assert all(d.position is None for d in space.decision_list)  # the forward is left as it was
    assert [p.requires_grad for p in ctx.model.parameters()] == grads
    sizes = {n: space.cost.cost_table()[n] for n in res.info["positions"]}
    # the learned positions meet the budget (interpolated size), up to float32 rounding of the positions
    r = np.array(list(res.info["positions"].values()))
    s = np.array([[sizes[n][b] for b in sorted(sizes[n])] for n in sizes], dtype=float)
    assert interpolated_sizes(r, s).sum() <= ctx.budget_bits * (1 + 1e-5)


def test_the_hessian_start_is_the_hessian_allocation_and_the_weights_never_change():
    ctx, space = tiny_context("16x", options={"steps": 8, "images": 64, "batch": 16, "init": "hessian"})
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    res = allocate("fracbits", ctx)
    for k, v in ctx.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ctx2, _ = tiny_context("16x")
    assert res.info["start_bits"] == allocate("hessian", ctx2).bits


def test_the_hessian_allocation_is_a_candidate_and_the_lowest_held_out_loss_wins():
    ctx, space = tiny_context("16x", options={"steps": 8, "images": 64, "batch": 16})
    res = allocate("fracbits", ctx)
    ctx2, _ = tiny_context("16x")
    assert res.info["hessian_bits"] == allocate("hessian", ctx2).bits
    losses = res.info["candidate_losses"]
    assert len(losses) == 2 + 4  # the Hessian allocation, the start's derivation, 4 checkpoints
    assert losses[res.info["picked"]] == min(losses)
    ctx3, _ = tiny_context("16x", options={"steps": 8, "images": 64, "batch": 16, "hessian_candidate": False})
    res3 = allocate("fracbits", ctx3)
    assert res3.info["hessian_bits"] is None and len(res3.info["candidate_losses"]) == 1 + 4


def test_the_uniform_start_is_derived_by_the_knapsack():
    # deterministic: no learning enters candidate 0 of a uniform start
    ctx, space = tiny_context("16x", options={"steps": 1, "images": 64, "batch": 16})
    res = allocate("fracbits", ctx)
    costs = space.cost.cost_table()
    names = [n for n in costs if len(costs[n]) > 1]
    s = np.array([[costs[n][b] for b in sorted(costs[n])] for n in names], dtype=float)
    r = uniform_position(s, float(ctx.budget_bits))
    expect = solve_budget({n: dict(zip(sorted(costs[n]), distance_scores(float(v), len(costs[n]))))
                           for n, v in zip(names, r)}, costs, ctx.budget_bits)
    assert res.info["start_bits"] == space.cost.to_layers(expect)


@pytest.mark.parametrize("options, match", [
    ({"speed": 1}, "unknown options"),
    ({"init": "random"}, "init must be 'hessian' or 'uniform'"),
    ({"optimizer": "sgd"}, "unknown options"),
    ({"steps": 0}, "must be >= 1"),
    ({"lr": 0}, "lr must be > 0"),
])
def test_bad_options_fail_before_any_work(options, match):
    ctx, _ = tiny_context("16x", options=options)
    with pytest.raises(ValueError, match=match):
        allocate("fracbits", ctx)


def test_bits_per_structure_are_refused():
    ctx, _ = tiny_context("16x", options={"steps": 1}, granularity="group:4")
    with pytest.raises(ValueError, match="bits per structure are not supported"):
        allocate("fracbits", ctx)
