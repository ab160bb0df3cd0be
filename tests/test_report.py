"""The plain-text and Markdown reports: aligned columns, what a size target bounds."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from mixbits.report import build_report, format_table, to_markdown
from mixbits.space import PrepareConfig, prepare_


def _report(**extra):
    model = nn.Sequential(OrderedDict(encoder=nn.Linear(64, 32), act=nn.ReLU(), classifier=nn.Linear(32, 10)))
    space = prepare_(model, PrepareConfig(pins={"classifier": 8}))  # the longest name is the pinned one
    return build_report(space, {"encoder": 2, "classifier": 8}, **extra)


def test_table_columns_stay_aligned_when_a_layer_is_pinned():
    lines = format_table(_report()).splitlines()
    header, rows = lines[0], lines[1:3]
    assert rows[1].startswith("classifier *  Linear")
    for row in rows:
        assert row.index("Linear") == header.index("kind")
        assert len(row) == len(header)


def test_size_target_says_it_bounds_the_whole_file():
    packed = {"promised_bytes": 700.0, "file_bytes": 1900, "header_bytes": 1200, "within_bound": True}
    text = format_table(_report(target="2KB", budget_bits=5000, packed_file=packed))
    assert "2KB (the whole .mbits file, header included; budget" in text
    # the headline is the file on disk; the cost model's parts and the header follow it
    assert "model file on disk (.mbits)    1,900 B = 1.86 KiB, within the target's 2,000 B" in text
    assert "quantized model size" not in text
    totals = _report()["totals"]
    header_kib = (1900 * 8 - totals["model_bits"]) / 8192
    assert f"  of which header and padding  {header_kib:.2f} KiB" in text
    assert "quantized model size (no file yet)" in format_table(_report(target="8x", budget_bits=5000))
    over = to_markdown(_report(target="1.5KiB", budget_bits=5000, packed_file=packed))
    assert "OVER the target's 1,536 B" in over
    ratio = format_table(_report(target="8x", budget_bits=5000, packed_file=packed))
    assert "header included" not in ratio and "target's" not in ratio


def test_bits_per_structure_are_summarised_in_rows_table_and_markdown():
    model = nn.Sequential(OrderedDict(encoder=nn.Linear(64, 32), act=nn.ReLU(), classifier=nn.Linear(32, 10)))
    space = prepare_(model, PrepareConfig(granularity="group:8"))
    bits = {"encoder": [1, 1, 2, 8], "classifier": (4, 1)}  # a JSON list is accepted
    report = build_report(space, bits)
    enc, cls = report["layers"]
    assert enc["bits"] == [1, 1, 2, 8] and enc["structures"] == 4 and enc["group_size"] == 8
    assert enc["bits_histogram"] == {"1": 2, "2": 1, "8": 1}
    assert enc["mean_bits"] == 3.0 and enc["bits_label"] == "1-8 ~3.00"
    assert cls["bits_label"] == "1-4 ~3.40"  # 8 channels at 4 bits, 2 at 1 bit
    # 64 weights per channel; one float16 scale per channel; four 4-bit codes in two bytes
    assert enc["size_bits"] == 16 + 8 * 64 * (1 + 1 + 2 + 8) + 32 * 16
    table = format_table(report)
    header, row = table.splitlines()[0], table.splitlines()[1]
    assert "1-8 ~3.00 (4 x 8ch)" in row and len(row) == len(header)
    assert "bits per structure from a to b" in table
    assert "| `encoder` | Linear | 2048 | 1-8 ~3.00 (4 x 8ch) |" in to_markdown(report)


def test_uniform_structures_and_the_search_movement_are_said_plainly():
    model = nn.Sequential(OrderedDict(encoder=nn.Linear(64, 32), act=nn.ReLU(), classifier=nn.Linear(32, 10)))
    space = prepare_(model, PrepareConfig(granularity="channel"))
    report = build_report(space, {"encoder": 1, "classifier": 4})
    assert [r["bits_label"] for r in report["layers"]] == ["1", "4"]
    assert "1 (32 x 1ch)" in format_table(report)
    still = build_report(space, {"encoder": 1, "classifier": 4},
                         search_movement={"init": "hessian", "changed_layers": [], "searchable_layers": 2})
    assert "the search moved no layer from its hessian start: these are the start's bits." in format_table(still)
    moved = build_report(space, {"encoder": 1, "classifier": 4},
                         search_movement={"init": "hessian", "changed_layers": ["encoder"], "searchable_layers": 2})
    assert "the search changed 1 of 2 layers from its hessian start: encoder" in to_markdown(moved)


def test_report_names_a_whole_model_target():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    space = prepare_(model)
    bits = {n: 4 for n in space.names}
    report = build_report(space, bits, target="4x:model", budget_bits=space.cost.quantized_bits(bits))
    text = format_table(report)
    assert "4x:model (the whole model, float tensors included;" in text
    assert "whole-model compression" in text and "weight compression" in text
