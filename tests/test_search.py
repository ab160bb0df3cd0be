import copy

import pytest
import torch
from torch import nn

from mixbits.data import TensorLoader
from mixbits.finetune import finetune_
from mixbits.search import SearchConfig, derive_bits, search
from mixbits.space import PrepareConfig, prepare_
from mixbits.train import NonFiniteLossError, TrainConfig, evaluate, fit

from .test_space import Zoo


def _toy_data(n=256, seed=0):
    """A learnable 5-class problem for the Zoo model: inputs (N, 2, 16)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, 16, generator=g)
    w = torch.randn(32, 5, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return x, y


def _loaders(seed=0):
    x, y = _toy_data(seed=seed)
    xt, yt = _toy_data(n=128, seed=seed + 100)
    mk = lambda a, b, s: TensorLoader(a, b, batch_size=32, shuffle=True, seed=s)
    return mk(x[:192], y[:192], 1), mk(x[192:], y[192:], 2), TensorLoader(xt, yt, batch_size=64)


def test_zoo_model_goes_through_search_finetune_evaluate():
    """Conv1d, depthwise and grouped convs, a module used twice and a tied weight, end to end."""
    model = Zoo()
    train, held, test = _loaders()
    fit(model, train, TrainConfig(epochs=3, lr=0.05))
    float_acc = evaluate(model, test)
    teacher = copy.deepcopy(model)
    space = prepare_(model)
    result = search(model, space, train, held, SearchConfig(target="8x", epochs=3, distill_weight=0.5),
                    teacher=teacher)
    assert set(result.bits) == set(space.names)
    assert space.cost.quantized_bits(result.bits) <= result.budget_bits
    assert space.cost.quantized_bits(result.bits) >= 0.9 * result.budget_bits
    hist = finetune_(model, space, result.bits, train, TrainConfig(epochs=2, lr=0.01, distill_weight=0.5),
                     teacher=teacher)
    with pytest.raises(ValueError, match="teacher was given but distill_weight is 0"):
        finetune_(model, space, result.bits, train, TrainConfig(epochs=1, lr=0.01), teacher=teacher)
    with pytest.raises(ValueError, match="teacher was given but distill_weight is 0"):
        search(model, space, train, held, SearchConfig(target="8x", epochs=3), teacher=teacher)
    assert len(hist) == 2
    assert space.fixed_bits() == result.bits
    acc = evaluate(model, test)
    assert 0.0 <= acc <= 1.0 and 0.0 <= float_acc <= 1.0
    # the searched history records an expected size at the budget after every search epoch
    for rec in result.history[1:]:
        assert rec["expected_quantized_bits"] == pytest.approx(result.budget_bits, rel=1e-4)


def test_search_is_deterministic_for_a_seed():
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = Zoo()
        train, held, _ = _loaders()
        space = prepare_(model)
        outs.append(search(model, space, train, held, SearchConfig(target="12x", epochs=2)).bits)
    assert outs[0] == outs[1]


def test_unreachable_target_fails_before_training():
    model = Zoo()
    before = copy.deepcopy(model.state_dict())
    train, held, _ = _loaders()
    space = prepare_(model)
    with pytest.raises(ValueError, match="unreachable"):
        search(model, space, train, held, SearchConfig(target="40x", epochs=2))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_derive_follows_preferences_and_fills_budget():
    model = nn.Sequential(nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4))
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8)))
    # layer 0 strongly prefers 8 bits, the others prefer 1 bit
    for d, k in zip(space.decision_list, (3, 0, 0)):
        d.logits.data.zero_()
        d.logits.data[k] = 5.0
    costs = space.cost.cost_table()
    budget = costs["0"][8] + costs["1"][2] + costs["2"][1]
    bits = derive_bits(space, budget)
    assert bits["0"] == 8
    assert space.cost.quantized_bits(bits) <= budget
    plain = derive_bits(space, budget, fill=False, min_use=0.0)
    assert plain == {"0": 8, "1": 1, "2": 1}  # 91% of the budget
    assert bits == {"0": 8, "1": 2, "2": 1}  # the leftover is spent on an upgrade
    # a lower bound of 95% forces the best assignment that uses the budget
    assert derive_bits(space, budget, fill=False) == {"0": 8, "1": 2, "2": 1}


def test_derive_prefers_budget_use_over_weak_preferences():
    """A coarse layer that cannot be upgraded is traded so the budget is used (the 16x digits case)."""
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, 8))
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4)))
    for d, k in zip(space.decision_list, (1, 0, 0)):  # layer 0 prefers 2 bits, the others 1 bit
        d.logits.data.zero_()
        d.logits.data[k] = 0.5
    costs = space.cost.cost_table()
    budget = costs["0"][1] + costs["1"][4] + costs["2"][2]
    bits = derive_bits(space, budget)
    used = space.cost.quantized_bits(bits)
    assert 0.95 * budget <= used <= budget


def test_nan_loss_stops_with_clear_message_and_restores_state():
    model = Zoo()
    train, held, _ = _loaders()
    x, y = _toy_data(64)
    x[5, 0, 0] = float("nan")
    bad = TensorLoader(x, y, batch_size=32)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(NonFiniteLossError, match="restored"):
        fit(model, bad, TrainConfig(epochs=1, lr=0.1))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    space = prepare_(model)
    with pytest.raises(NonFiniteLossError, match="restored"):
        search(model, space, bad, held, SearchConfig(target="8x", epochs=2, warmup_epochs=0))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_the_logits_learn_and_the_movement_is_reported():
    """The search moves its logits away from the start; frozen logits (a tiny lr) move nothing.

    Fails if the logit step is lost: the movement would be zero for both runs.
    """
    moved = {}
    for lr in (0.2, 1e-12):
        torch.manual_seed(0)
        model = Zoo()
        train, held, _ = _loaders()
        fit(model, train, TrainConfig(epochs=2, lr=0.05))
        space = prepare_(model)
        start = {n: d.logits.detach().clone() for n, d in zip(space.names, space.decision_list)}
        result = search(model, space, train, held, SearchConfig(target="8x", epochs=3, logit_lr=lr, init="uniform"))
        change = max(float((d.logits.detach() - start[n]).abs().max()) for n, d in zip(space.names, space.decision_list))
        moved[lr] = (change, result.movement)
        assert set(result.start_bits) == set(space.names)
        assert 0.0 <= result.movement["changed_fraction"] <= 1.0
    change, movement = moved[0.2]
    # 3 epochs, 2 of them learning the logits with one step per weight step (6 batches): 12 Adam steps
    assert change > 0.5
    assert movement["mean_tv"] > 0.05
    frozen_change, frozen = moved[1e-12]
    assert frozen_change < 1e-9
    assert frozen["mean_tv"] < 1e-9 and frozen["changed_layers"] == []


def test_logit_ratio_sets_the_logit_steps_per_epoch():
    torch.manual_seed(0)
    model = Zoo()
    train, held, _ = _loaders()  # 6 weight batches, 2 held-out batches per epoch
    space = prepare_(model)
    result = search(model, space, train, held, SearchConfig(target="8x", epochs=2, warmup_epochs=0, init="uniform",
                                                           logit_ratio=1.5))
    # 9 logit steps per epoch: the held-out split (2 batches) is cycled; the trace keeps one record per step
    assert [len(rec["trace"]) for rec in result.history] == [9, 9]
    assert result.history[-1]["trace"][-1]["epoch"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="logit_ratio"):
        SearchConfig(logit_ratio=0)


def test_fill_upgrades_are_reported_and_can_be_turned_off():
    from mixbits.report import build_report, format_table

    runs = {}
    for fill in (True, False):
        torch.manual_seed(0)
        model = Zoo()
        train, held, _ = _loaders()
        space = prepare_(model)
        result = search(model, space, train, held, SearchConfig(target="12x", epochs=2, init="uniform", fill=fill))
        runs[fill] = (space, result)
    space, filled = runs[True]
    _, chosen = runs[False]
    assert chosen.fill_upgrades == {}
    assert filled.fill_upgrades == {"out": [1, 2]}
    # the fill only upgrades: every layer keeps at least the search's bits, and says so
    for name, (before, after) in filled.fill_upgrades.items():
        assert after > before and chosen.bits[name] == before and filled.bits[name] == after
    assert space.cost.quantized_bits(filled.bits) >= space.cost.quantized_bits(chosen.bits)
    assert space.cost.quantized_bits(filled.bits) <= filled.budget_bits
    text = format_table(build_report(space, filled.bits, fill_upgrades=filled.fill_upgrades))
    assert ("budget fill:" in text) == bool(filled.fill_upgrades)


def test_bar_shows_no_number_before_the_first_weight_step():
    from torch import nn

    from mixbits.search import _bar_numbers
    from mixbits.space import PrepareConfig, prepare_

    space = prepare_(nn.Sequential(nn.Linear(8, 4)), PrepareConfig())
    empty = _bar_numbers(space, {"loss": 0.0, "correct": 0, "seen": 0}, 0, 0.0, 32 * 32)
    assert (empty["loss"], empty["acc"]) == ("-", "-")
    some = _bar_numbers(space, {"loss": 1.5, "correct": 3, "seen": 4}, 2, 0.0, 32 * 32)
    assert (some["loss"], some["acc"]) == ("0.750", "75.0%")


def test_search_per_channel_learns_structures_and_reports_them():
    torch.manual_seed(0)
    model = Zoo()
    train, held, test = _loaders()
    fit(model, train, TrainConfig(epochs=2, lr=0.05))
    space = prepare_(model, PrepareConfig(granularity="channel"))
    assert space.cost.num_units == 8 + 8 + 16 + 16 + 16 + 5
    result = search(model, space, train, held, SearchConfig(target="8x", epochs=3, logit_lr=0.2))
    assert all(isinstance(result.bits[layer.name], tuple) and len(result.bits[layer.name]) == layer.num_groups
               for layer in space.layers)
    assert space.cost.quantized_bits(result.bits) <= result.budget_bits
    assert set(result.start_bits) == set(space.names)
    m = result.movement
    assert m["structures"] == space.cost.num_units and 0 <= m["changed_structures"] <= m["structures"]
    assert m["units"] == 69 and m["solve_seconds"] > 0
    # the history keeps one probability row per layer (the mean over its structures), for the plots
    assert len(result.history[-1]["probs"]["c1"]) == 6
    assert len(result.history[-1]["argmax_bits"]["c1"]) == 8
    space.fix_(result.bits)
    assert 0.0 <= evaluate(model, test) <= 1.0
