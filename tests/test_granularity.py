"""Bits per structure: parsing, the cost of structures, prepare_, the mixed and fixed forward,
the price projection and the exact derivation over structures (brute force on tiny cases)."""

import itertools
import logging

import numpy as np
import pytest
import torch
from torch import nn

from mixbits.cost import LayerInfo
from mixbits.derive import solve_budget, solve_budget_dp
from mixbits.granularity import parse_granularity
from mixbits.quant import quantize_hard
from mixbits.search import derive_bits
from mixbits.space import PrepareConfig, prepare_


@pytest.mark.parametrize("text,kind,size,canonical", [
    ("layer", "layer", 0, "layer"), ("channel", "channel", 1, "channel"), ("group:8", "group", 8, "group:8"),
    (" GROUP:32 ", "group", 32, "group:32"), ("group:1", "channel", 1, "channel"), ("head", "head", 0, "head"),
])
def test_parse_granularity(text, kind, size, canonical):
    g = parse_granularity(text)
    assert (g.kind, g.size, g.text) == (kind, size, canonical)


@pytest.mark.parametrize("text,message", [
    ("channels", "unknown granularity 'channels'"), ("group:0", "at least one channel"), ("group:", "unknown"),
    ("group:-4", "unknown"), ("row", "write layer, channel, group:N"),
])
def test_bad_granularity_says_what_to_write(text, message):
    with pytest.raises(ValueError, match=message):
        parse_granularity(text)
    with pytest.raises(ValueError, match=message):
        PrepareConfig(granularity=text)


def test_layer_info_structures_and_their_exact_sizes():
    # 10 output channels of 3*3*3 = 27 weights, groups of 4: 4 + 4 + 2 channels
    info = LayerInfo(name="c", aliases=(), kind="Conv2d", shape=(10, 3, 3, 3), candidates=(1, 2, 8, 16, 32),
                     group_size=4)
    assert info.num_groups == 3 and info.group_channels == (4, 4, 2) and info.grouped
    assert info.unit_names == ("c#0", "c#1", "c#2")
    assert info.index_bits == 16  # three 4-bit codes, padded to two bytes
    # codes + one float16 scale per channel at 1..8 bits; 16 and 32 bits store no scale
    assert info.size_bits((1, 8, 32)) == 16 + (108 * 1 + 4 * 16) + (108 * 8 + 4 * 16) + 54 * 32
    assert info.size_bits(2) == 16 + 270 * 2 + 10 * 16
    sizes = info.unit_sizes()
    assert sizes.shape == (3, 5)
    assert sizes[0, 0] == 16 + 108 + 64 and sizes[2, 4] == 54 * 32  # the index is charged to the first structure
    assert info.expand(4) == (4, 4, 4)
    with pytest.raises(ValueError, match="3 structure"):
        info.expand((1, 2))
    with pytest.raises(ValueError, match="group_size 10 must be 0"):
        LayerInfo(name="c", aliases=(), kind="Conv2d", shape=(10, 3), candidates=(1,), group_size=10)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.Conv2d(12, 6, 3), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))


@pytest.mark.parametrize("granularity,groups", [
    ("layer", [1, 1, 1]), ("channel", [12, 6, 5]), ("group:4", [3, 2, 2]), ("group:8", [2, 1, 1]),
])
def test_prepare_makes_one_unit_per_structure(granularity, groups):
    space = prepare_(_net(), PrepareConfig(granularity=granularity))
    assert [layer.num_groups for layer in space.layers] == groups
    assert space.cost.num_units == sum(groups)
    assert [tuple(d.logits.shape) for d in space.decision_list] == [(g, 6) if g > 1 else (6,) for g in groups]
    table = space.cost.cost_table()
    assert len(table) == sum(groups)
    # the units' sizes add up to the layers' sizes, index included
    bits = space.cost.to_layers({u: 2 for u in table})
    assert sum(per[2] for per in table.values()) == space.cost.quantized_bits(bits)


def test_pins_keep_one_bitwidth_and_patterns_still_name_layers():
    space = prepare_(_net(), PrepareConfig(granularity="channel", pins={"0": 8}, exclude=("4",)))
    assert [(layer.name, layer.num_groups, layer.pinned) for layer in space.layers] == [("0", 1, True), ("2", 6, False)]


def test_units_round_trip_and_bad_lengths_are_named():
    space = prepare_(_net(), PrepareConfig(granularity="group:4"))
    bits = {"0": (1, 2, 8), "2": (4, 32), "4": (16, 1)}
    assert space.cost.to_layers(space.cost.to_units(bits)) == bits
    assert space.cost.normalize({"0": [1, 2, 8], "2": 4, "4": (16, 1)}) == {"0": (1, 2, 8), "2": (4, 4), "4": (16, 1)}
    with pytest.raises(ValueError, match="layer '0' has 3 structure"):
        space.fix_({"0": (1, 2), "2": 4, "4": 4})
    with pytest.raises(ValueError, match="unsupported bitwidth 12"):
        space.fix_({"0": (1, 2, 12), "2": 4, "4": 4})


def test_fixed_structures_compute_each_at_its_own_bits_exactly():
    model = _net()
    space = prepare_(model, PrepareConfig(granularity="group:4"))
    bits = {"0": (1, 3, 32), "2": (8, 16), "4": (2, 1)}
    space.fix_(bits)
    for layer in space.layers:
        w = space.float_weight(layer.name)
        got = dict(model.named_modules())[layer.name].weight
        per_channel = [b for b, c in zip(layer.expand(bits[layer.name]), layer.group_channels) for _ in range(c)]
        for ch, b in enumerate(per_channel):
            assert torch.equal(got[ch], quantize_hard(w, b)[ch]), (layer.name, ch, b)


def test_one_hot_structure_logits_mix_to_the_fixed_weight_and_every_row_gets_a_gradient():
    model = _net()
    space = prepare_(model, PrepareConfig(granularity="channel", candidates=(1, 2, 4, 32)))
    d = space.decision("2")
    pick = torch.tensor([0, 1, 2, 3, 1, 0])  # one candidate per channel
    with torch.no_grad():
        d.logits.fill_(-50.0)
        d.logits[torch.arange(6), pick] = 50.0
    mixed = model[2].weight.detach().clone()
    w = space.float_weight("2")
    for ch, k in enumerate(pick.tolist()):
        assert torch.allclose(mixed[ch], quantize_hard(w, (1, 2, 4, 32)[k])[ch], atol=1e-6)
    with torch.no_grad():
        d.logits.normal_()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert d.logits.grad.shape == (6, 4) and bool((d.logits.grad.abs().sum(dim=1) > 0).all())


def test_projection_meets_the_budget_over_structures():
    space = prepare_(_net(), PrepareConfig(granularity="channel"))
    torch.manual_seed(1)
    for d in space.decision_list:
        d.logits.data.normal_(0, 2)
    budget = space.cost.float_quantized_bits() // 20
    space.project_(budget)
    assert float(space.expected_quantized_bits()) == pytest.approx(budget, rel=1e-6)


def _brute_force(prefs, costs, budget):
    names = list(costs)
    best, arg = -np.inf, None
    for combo in itertools.product(*[sorted(costs[n]) for n in names]):
        size = sum(costs[n][b] for n, b in zip(names, combo))
        score = sum(prefs[n][b] for n, b in zip(names, combo))
        if size <= budget and score > best + 1e-12:
            best, arg = score, dict(zip(names, combo))
    return best, arg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_derivation_over_structures_matches_brute_force(seed):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    space = prepare_(model, PrepareConfig(granularity="group:2", candidates=(1, 2, 8)))
    assert space.cost.num_units == 5  # 3 + 2 structures: 3**5 = 243 assignments
    for d in space.decision_list:
        d.logits.data.normal_(0, 1.5)
    prefs, costs = space.preferences(), space.cost.cost_table()
    budget = (space.cost.min_quantized_bits() + space.cost.max_quantized_bits()) // 3
    best, _ = _brute_force(prefs, costs, budget)
    milp = solve_budget(prefs, costs, budget)
    dp = solve_budget_dp(prefs, costs, budget)
    for got in (milp, dp):
        assert sum(costs[u][b] for u, b in got.items()) <= budget
        assert sum(prefs[u][b] for u, b in got.items()) == pytest.approx(best, abs=1e-5)
    bits = derive_bits(space, budget, fill=False)
    assert space.cost.quantized_bits(bits) <= budget
    assert isinstance(bits["0"], tuple) and len(bits["0"]) == 3


def test_exact_solve_scales_to_thousands_of_structures():
    """Exactness at scale: 3,000 units, the solution within the budget and at least as good as the
    greedy LP-rounding bound's feasible side (the MILP's own optimality gap is HiGHS's)."""
    rng = np.random.default_rng(0)
    costs = {f"u{i}": {b: int(16 + 64 * b) for b in (1, 2, 4, 8)} for i in range(3000)}
    prefs = {u: {b: float(v) for b, v in zip((1, 2, 4, 8), rng.normal(size=4))} for u in costs}
    budget = int(sum(16 + 64 * 2.5 for _ in costs))
    got = solve_budget(prefs, costs, budget)
    assert len(got) == 3000
    assert sum(costs[u][b] for u, b in got.items()) <= budget
    # each unit's best candidate regardless of size is an upper bound on the objective
    upper = sum(max(p.values()) for p in prefs.values())
    assert sum(prefs[u][b] for u, b in got.items()) <= upper + 1e-9
    # and the solver beats the cheapest assignment that fits (every unit at 2 bits)
    assert sum(prefs[u][b] for u, b in got.items()) >= sum(p[2] for p in prefs.values())


class _Attention(nn.Module):
    """An attention block laid out like Hugging Face's: head_dim on the module, q/k/v/o projections."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.head_dim = dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        return self.o_proj(self.q_proj(x) + self.k_proj(x) * self.v_proj(x))


def test_head_granularity_groups_attention_projections_by_head():
    model = nn.Sequential(_Attention(), nn.MultiheadAttention(16, 2, batch_first=True))
    model[0](torch.randn(1, 3, 16))
    space = prepare_(model, PrepareConfig(granularity="head"))
    groups = {layer.name: (layer.num_groups, layer.group_size) for layer in space.layers}
    assert groups["0.q_proj"] == (4, 4) and groups["0.k_proj"] == (4, 4) and groups["0.v_proj"] == (4, 4)
    assert groups["0.o_proj"] == (1, 0)  # its output channels are not laid out by head
    assert groups["1.in_proj_weight"] == (6, 8)  # q, k and v of 2 heads of 8
    assert groups["1.out_proj"] == (1, 0)


def test_head_granularity_without_attention_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="mixbits.space"):
        space = prepare_(_net(), PrepareConfig(granularity="head"))
    assert space.cost.num_units == 3
    assert "no attention projection was found" in caplog.text


def test_head_granularity_on_gpt2_groups_c_attn_columns_by_head():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=97, n_positions=16, n_embd=32, n_layer=1,
                                                                 n_head=4))
    space = prepare_(model, PrepareConfig(granularity="head"))
    info = {layer.name: layer for layer in space.layers}
    attn = info["transformer.h.0.attn.c_attn"]
    # Conv1D (in, out): output features on dim 1, 3 * 32 of them, 8 per head
    assert (attn.channel_dim, attn.num_groups, attn.group_size) == (1, 12, 8)
    assert info["transformer.h.0.attn.c_proj"].num_groups == 1
    bits = {n: (tuple([1, 8] * 6) if n == attn.name else 4) for n in info}
    space.fix_(bits)
    w, got = space.float_weight(attn.name), model.transformer.h[0].attn.c_attn.weight
    assert torch.equal(got[:, :8], quantize_hard(w, 1, channel_dim=1)[:, :8])
    assert torch.equal(got[:, 8:16], quantize_hard(w, 8, channel_dim=1)[:, 8:16])
