"""``benchmarks/selection_objective.py``: its held-out loss is the one every method ranks by."""

from __future__ import annotations

import torch

from mixbits.methods.scoring import HeldOutScorer
from mixbits.pipeline import Settings, start_row
from mixbits.pipeline.data import build_data
from mixbits.pipeline.float_model import new_model

from ._benchmark_scripts import load_benchmark


def _module():
    return load_benchmark("selection_objective")


def test_held_out_scores_give_the_scorers_loss_and_the_accuracy_of_the_same_outputs():
    so = _module()
    settings = Settings(train_subset=200, device="cpu")
    data = build_data(settings.data, train_subset=200, device=torch.device("cpu"))
    torch.manual_seed(0)
    state = new_model(settings.model, data).state_dict()
    row = start_row(settings, data, state, 0)
    scorer = HeldOutScorer(row.model, row.space, row.loaders["held_out"], images=1 << 30, bn_images=512)
    for b in (1, 4):
        bits = {name: b for name in row.space.searchable()}
        loss, acc = so.held_out_scores(scorer, bits)
        assert abs(loss - scorer.loss(bits)) < 1e-5
        row.model.eval()
        with torch.no_grad():
            expect = float((row.model(scorer.x).argmax(1) == scorer.y).float().mean())
        assert acc == expect and 0.0 <= acc <= 1.0
    assert len(scorer.y) == 40  # the held-out fifth of 200 images, each once


def test_recorded_candidates_are_the_distinct_integer_post_allocations_of_the_newest_rows(tmp_path):
    import csv
    import json
    import types

    so = _module()
    path = tmp_path / "aq.csv"
    rows = [("m", "post", "a", "24x", "0", {"x": 1, "y": 2}), ("m", "post", "b", "24x", "0", {"x": 1, "y": 2}),
            ("m", "post", "c", "24x", "1", {"x": 2, "y": 1}), ("m", "ft1", "d", "24x", "0", {"x": 4, "y": 4}),
            ("m", "post", "e", "28x", "0", {"x": 1.5, "y": 1}), ("other", "post", "a", "24x", "0", {"x": 8, "y": 8}),
            ("m", "post", "c", "24x", "1", {"x": 1, "y": 1})]  # c seed 1 run again: the newest row counts
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "regime", "method", "target", "seed", "bits"])
        w.writerows([(*r[:5], json.dumps(r[5])) for r in rows])

    def newest(rs):
        last = {(r["model"], r["regime"], r["method"], r["target"], r["seed"]): r for r in rs}
        return list(last.values())

    aq = types.SimpleNamespace(CSV_PATH=path, _newest=newest)
    assert so._recorded(aq, "m") == {"24x": [{"x": 1, "y": 2}, {"x": 1, "y": 1}]}  # 28x: fractional bits only
