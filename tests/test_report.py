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
    assert "1,900 B = 1.86 KiB, promised 0.68 KiB + header 1.17 KiB, within the target's 2,000 B" in text
    over = to_markdown(_report(target="1.5KiB", budget_bits=5000, packed_file=packed))
    assert "OVER the target's 1,536 B" in over
    ratio = format_table(_report(target="8x", budget_bits=5000, packed_file=packed))
    assert "header included" not in ratio and "target's" not in ratio
