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
    # evaluate() at the fixed bits counts what the quantized model predicts (two paths, one machine)
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
    assert evaluate(model, test) == hits / 128
    assert teacher is not model and evaluate(teacher, test) == float_acc
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
    """The search moves its logits away from the start; frozen logits (train_logits=False) move nothing.

    Fails if the logit step is lost: the movement would be zero for both runs.
    """
    moved = {}
    for lr in (0.2, None):
        torch.manual_seed(0)
        model = Zoo()
        train, held, _ = _loaders()
        fit(model, train, TrainConfig(epochs=2, lr=0.05))
        space = prepare_(model)
        start = {n: d.logits.detach().clone() for n, d in zip(space.names, space.decision_list)}
        learn = dict(logit_lr=lr) if lr else dict(train_logits=False)
        result = search(model, space, train, held, SearchConfig(target="8x", epochs=3, init="uniform", **learn))
        change = max(float((d.logits.detach() - start[n]).abs().max()) for n, d in zip(space.names, space.decision_list))
        moved[lr] = (change, result.movement)
        assert set(result.start_bits) == set(space.names)
        changed = [n for n in space.searchable() if result.start_bits[n] != result.bits[n]]
        assert result.movement["changed_layers"] == sorted(changed)
        assert result.movement["changed_fraction"] == pytest.approx(len(changed) / len(space.searchable()))
    change, movement = moved[0.2]
    # 3 epochs, 2 of them learning the logits with one step per weight step (6 batches): 12 Adam steps
    assert change > 0.5
    assert movement["mean_tv"] > 0.05
    frozen_change, frozen = moved[None]
    assert frozen_change == 0.0
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
    # The fill reports exactly the layers it changed (which ones depends on the trained logits, so on the CPU).
    assert set(filled.fill_upgrades) == {n for n in space.names if filled.bits[n] != chosen.bits[n]}
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
    expand = lambda layer, b: list(layer.expand(b))
    moved = sum(s != e for layer in space.layers if not layer.pinned
                for s, e in zip(expand(layer, result.start_bits[layer.name]), expand(layer, result.bits[layer.name])))
    assert m["structures"] == space.cost.num_units and m["changed_structures"] == moved
    assert m["units"] == 69 and m["solve_seconds"] > 0
    # the history keeps one probability row per layer (the mean over its structures), for the plots
    assert len(result.history[-1]["probs"]["c1"]) == 6
    assert len(result.history[-1]["argmax_bits"]["c1"]) == 8
    space.fix_(result.bits)
    assert space.fixed_bits() == space.cost.normalize(result.bits)


def test_search_takes_any_loss_frozen_weights_and_a_whole_model_target():
    """A regression net with a frozen first layer, searched under a whole-model target with an MSE loss."""
    from mixbits.data import TensorLoader

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    model[0].requires_grad_(False)
    w0 = model[0].weight.detach().clone()
    space = prepare_(model)
    x = torch.randn(32, 6)
    y = x[:, :2] - x[:, 2:4]
    loader = TensorLoader(x, y, batch_size=8, shuffle=False)
    result = search(model, space, loader, loader, SearchConfig(target="4x:model", epochs=2, amp=False),
                    loss_fn=torch.nn.functional.mse_loss)
    cost = space.cost
    assert cost.model_bits(result.bits) * 4 <= cost.float_model_bits()
    assert torch.equal(model[0]._parameters["weight"].detach(), w0) and not model[0].weight.requires_grad
    assert result.history[-1]["held_out_loss"] is not None
