"""``benchmarks/allocation_quality.py``'s bookkeeping: a row run again with ``--redo`` replaces the earlier one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "allocation_quality.py"


def _module():
    spec = importlib.util.spec_from_file_location("allocation_quality_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_report_keeps_the_newest_row_of_each_cell_in_the_order_first_seen():
    aq = _module()

    def row(method, seed, acc, commit):
        return {"model": "m", "regime": "post", "method": method, "target": "24x", "seed": seed,
                "test_accuracy": acc, "commit": commit}

    rows = [row("probe", "0", "0.5", "a"), row("probe", "1", "0.6", "a"), row("hessian", "0", "0.4", "a"),
            row("probe", "0", "0.7", "b")]
    got = aq._newest(rows)
    assert [(r["method"], r["seed"], r["test_accuracy"], r["commit"]) for r in got] == [
        ("probe", "0", "0.7", "b"), ("probe", "1", "0.6", "a"), ("hessian", "0", "0.4", "a")]
