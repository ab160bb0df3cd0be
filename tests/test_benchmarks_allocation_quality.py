"""``benchmarks/allocation_quality.py``'s bookkeeping: a row run again with ``--redo`` replaces the earlier one."""

from __future__ import annotations

from ._benchmark_scripts import load_benchmark


def _module():
    return load_benchmark("allocation_quality")


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


def test_reevaluate_measures_equal_bits_once_keeps_the_allocation_and_upgrades_an_older_header(tmp_path,
                                                                                               monkeypatch):
    import csv
    import json

    aq = _module()
    path = tmp_path / "aq.csv"
    monkeypatch.setattr(aq, "CSV_PATH", path)
    old_fields = [f for f in aq.FIELDS if f != "bits_commit"]

    def row(method, seed, bits, acc, commit="old"):
        return {"model": "m", "regime": "ft1", "method": method, "target": "16x", "seed": seed,
                "weight_compression": "16.0", "test_accuracy": acc, "reference_accuracy": "0.9",
                "reference": "exhaustive", "seconds": "12.5", "metric": "top1", "held_out_loss": "0.3",
                "size_bits": "100", "budget_bits": "110", "bits": json.dumps(bits), "commit": commit,
                "dirty": "False", "machine": "old machine"}

    a, b = {"x": 2, "y": 1}, {"x": 1, "y": 2}
    rows = [row("reference", "0", a, "0.90"), row("probe", "0", a, "0.85"), row("search", "0", b, "0.88"),
            row("mct_own", "0", b, "0.70"), row("probe", "1", a, "0.80"),
            {**row("probe", "0", a, "0.86"), "regime": "post"}]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=old_fields)
        w.writeheader()
        w.writerows(rows)
    calls = []

    def measure(seed, regime, bits):
        calls.append((seed, regime, bits))
        return 0.5 + 0.1 * bits["x"] + 0.01 * seed

    monkeypatch.setattr(aq, "stamp", lambda: {"commit": "new", "dirty": False})
    monkeypatch.setattr(aq, "describe", lambda: "new machine")
    aq.reevaluate("m", ["ft1"], [0], measure)
    assert calls == [(0, "ft1", a), (0, "ft1", b)]  # the reference's bits measured once for probe too
    with path.open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == aq.FIELDS
        got = list(reader)
    assert len(got) == len(rows) + 3
    assert all(g["bits_commit"] == "" for g in got[:len(rows)])  # the old rows kept, the new column blank
    new = {g["method"]: g for g in got[len(rows):]}
    assert set(new) == {"reference", "probe", "search"}
    assert new["probe"]["test_accuracy"] == new["reference"]["test_accuracy"] == "0.7"
    assert new["search"]["test_accuracy"] == "0.6"
    assert new["search"]["reference_accuracy"] == "0.7"
    for g in new.values():
        assert (g["commit"], g["machine"], g["bits_commit"], g["seconds"], g["held_out_loss"]) == (
            "new", "new machine", "old", "12.5", "0.3")
    newest = {(r["method"], r["regime"], r["seed"]): r["test_accuracy"] for r in aq._newest(got)}
    assert newest[("probe", "ft1", "0")] == "0.7" and newest[("probe", "ft1", "1")] == "0.80"
    assert newest[("probe", "post", "0")] == "0.86" and newest[("mct_own", "ft1", "0")] == "0.70"
