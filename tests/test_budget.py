import pytest
from torch import nn

import torch

from mixbits.budget import budget_bits, parse_target, with_scope
from mixbits.space import PrepareConfig, prepare_


def _space(**kw):
    return prepare_(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)), PrepareConfig(**kw))


@pytest.mark.parametrize("text,kind,value", [
    ("24x", "compression", 24.0), ("24X", "compression", 24.0), ("300KB", "size_bytes", 300_000.0),
    ("1.2MB", "size_bytes", 1_200_000.0), ("2KiB", "size_bytes", 2048.0), ("1.5bits", "average_bits", 1.5),
    ("4 bit", "average_bits", 4.0),
])
def test_parse(text, kind, value):
    t = parse_target(text)
    assert (t.kind, t.value) == (kind, value)


@pytest.mark.parametrize("text", ["", "abc", "0x", "-3x", "12", "3 parsecs", "nanx"])
def test_parse_rejects(text):
    with pytest.raises(ValueError):
        parse_target(text)


def test_budget_in_each_unit():
    space = _space()
    n = 64 * 32 + 32 * 10  # 2368
    assert space.cost.num_quantized_weights == n
    assert budget_bits("8x", space.cost) == (n * 32) // 8
    assert budget_bits("2bits", space.cost) == 2 * n
    rest = space.cost.float_rest_bits  # biases: 42 * 32
    header = space.cost.file_overhead_bits  # header bound of the .mbits file and code padding
    assert (rest, header) == (1344, 9382)
    assert budget_bits("3KB", space.cost) == 24000 - rest - header
    assert budget_bits("3KiB", space.cost) == 24576 - rest - header


def test_size_targets_bound_the_file_header_included(tmp_path):
    """Export the largest assignment a size target allows: the file on disk fits the target."""
    from mixbits.derive import solve_budget
    from mixbits.export import export_model

    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    space = prepare_(model, PrepareConfig())
    table = space.cost.cost_table()
    for text, limit in (("2.2KB", 2200), ("2.5KiB", 2560), ("4KB", 4000)):
        budget = budget_bits(text, space.cost)
        bits = solve_budget({n: {b: float(b) for b in c} for n, c in table.items()}, table, budget)
        res = export_model(model, space, tmp_path / "m.mbits", bits=bits, zoo="mlp", model_kwargs={"width": 32})
        assert res.file_bytes <= res.file_bound_bytes <= limit


def test_unreachable_and_too_large_targets_name_the_limits():
    space = _space()
    with pytest.raises(ValueError, match=r"unreachable.*between 1x and 2[0-9.]+x"):
        budget_bits("31x", space.cost)
    with pytest.raises(ValueError, match="larger than the model"):
        budget_bits("0.5x", space.cost)
    with pytest.raises(ValueError, match="unreachable"):
        budget_bits("0.5bits", space.cost)
    with pytest.raises(ValueError, match="KB of file .*the file header at most"):
        budget_bits("100B", space.cost)


def test_pins_narrow_the_reachable_range():
    space = _space(pins={"0": 8})
    with pytest.raises(ValueError, match="unpin"):
        budget_bits("20x", space.cost)


# ---- targets over the whole model (scope ":model") ----

class _BareParameter(nn.Module):
    """Most parameters in a bare Parameter used with F.linear: quantized only when named with params=."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(256, 64) * 0.1)
        self.head = nn.Linear(256, 4)

    def forward(self, x):
        return self.head(torch.nn.functional.linear(x, self.w))


def test_scope_parses_and_rejects():
    assert parse_target("16x:model").scope == "model" and parse_target("16x").scope == "weights"
    assert parse_target("1.5bits:weights").scope == "weights" and parse_target("12KB").scope == "model"
    assert with_scope("16x", "model") == "16x:model" and with_scope("16x:model", "model") == "16x:model"
    with pytest.raises(ValueError, match="scope"):
        parse_target("16x:everything")
    with pytest.raises(ValueError, match="scope"):
        with_scope("16x:weights", "model")


def test_model_scope_budget_counts_what_stays_float():
    space = _space()
    cost = space.cost
    fm, rest = cost.float_model_bits(), cost.float_rest_bits
    assert budget_bits("4x:model", cost) == fm // 4 - rest
    assert budget_bits("3bits:model", cost) == 3 * cost.num_params - rest
    assert budget_bits("4x:model", cost) < budget_bits("4x", cost)  # the float biases take part of the budget


def test_model_scope_target_unreachable_names_the_whole_model_range():
    model = _BareParameter()
    space = prepare_(model)  # only the head: 1,028 of 17,412 parameters
    with pytest.raises(ValueError, match="whole-model compression.*params="):
        budget_bits("16x:model", space.cost)
    space = prepare_(_BareParameter(), PrepareConfig(params=("w",)))
    bits = budget_bits("16x:model", space.cost)
    assert bits + space.cost.float_rest_bits <= space.cost.float_model_bits() / 16


def test_low_coverage_warning_names_parameters_and_how_to_quantize_them(caplog):
    with caplog.at_level("WARNING", logger="mixbits.space"):
        prepare_(_BareParameter())
    assert "largest: w (256, 64)" in caplog.text
    assert "params=('w',)" in caplog.text and "--param w" in caplog.text and "16x:model" in caplog.text
