import csv
import json

import pytest

from mixbits.cli import main
from mixbits.sweep import ROW_FIELDS, SweepConfig, parse_method, sweep



def _config(tmp_path, **kw):
    base = dict(data="digits", model="digits_cnn", methods=("search", "random", "uniform:2"), targets=("16x",),
                seeds=(0,), float_epochs=1, search_epochs=2, finetune_epochs=1, train_subset=320, test_subset=128,
                device="cpu", out=str(tmp_path / "sweep"))
    base.update(kw)
    return SweepConfig(**base)


def test_sweep_writes_the_table_and_the_plot(tmp_path):
    result = sweep(_config(tmp_path))
    rows = result["rows"]
    assert [(r["method"], r["target"]) for r in rows] == [
        ("search", "16x"), ("random", "16x"), ("uniform:2", "2bit"), ("uniform:1", "1bit")]
    for r in rows:
        assert r["quantized_bits"] <= r["budget_bits"]
        assert r["test_accuracy"] * 128 == pytest.approx(round(r["test_accuracy"] * 128))  # k of the 128 test images
    assert rows[0]["weight_compression"] >= 16.0
    assert rows[2]["average_bits"] > 2.0 and set(rows[2]["bits"].values()) == {2}
    out = tmp_path / "sweep"
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == list(ROW_FIELDS)
    assert [t["method"] for t in table] == [r["method"] for r in rows]
    saved = json.loads((out / "sweep.json").read_text())
    assert len(saved["rows"]) == 4 and saved["float_accuracy"] == result["float_accuracy"]
    png = (out / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (out / "float.pt").is_file()


def test_sweep_cli_from_a_checkpoint(tmp_path, capsys):
    from mixbits.models import create_model
    from mixbits.runfiles import save_checkpoint

    model = create_model("digits_cnn", in_channels=1, num_classes=10, input_size=8)
    save_checkpoint(tmp_path / "float.pt", {"state_dict": model.state_dict()})
    code = main(["sweep", "-q", "--checkpoint", str(tmp_path / "float.pt"), "--methods", "hessian,uniform",
                 "--targets", "8x,24x", "--finetune-epochs", "0", "--train-subset", "320", "--test-subset", "128",
                 "--no-plot", "--no-binary-point", "--no-compute-matched", "--finetune-from", "float", "--device", "cpu", "--out", str(tmp_path / "cli")])
    assert code == 0
    rows = json.loads((tmp_path / "cli" / "sweep.json").read_text())["rows"]
    assert [(r["method"], r["target"]) for r in rows] == [("hessian", "8x"), ("hessian", "24x"),
                                                          ("uniform", "8x"), ("uniform", "24x")]
    assert all(r["test_accuracy"] == r["derived_accuracy"] for r in rows)  # no fine-tuning epochs
    assert "csv:" in capsys.readouterr().out


def test_parse_method_and_bad_settings(tmp_path):
    assert parse_method("uniform:4") == ("uniform", {"bits": 4})
    assert parse_method("hessian") == ("hessian", {})
    with pytest.raises(ValueError, match="known"):
        parse_method("nope")
    with pytest.raises(ValueError, match="uniform:K"):
        parse_method("uniform:x")
    with pytest.raises(ValueError, match="targets is empty"):
        _config(tmp_path, targets=())
    with pytest.raises(ValueError, match="finetune_from"):
        _config(tmp_path, finetune_from="search")


def test_a_sweep_keeps_its_models_and_lists_one_model_once(tmp_path, capsys):
    # uniform at 24x and 28x gives every layer 1 bit: the all-binary point, one model listed once
    result = sweep(_config(tmp_path, methods=("uniform",), targets=("24x", "28x"), finetune_epochs=0, plot=False))
    rows = result["rows"]
    assert [(r["method"], r["target"]) for r in rows] == [("uniform", "24x")]
    assert rows[0]["also"] == "uniform@28x;uniform:1@1bit"
    assert set(rows[0]["bits"].values()) == {1}
    folder = tmp_path / "sweep" / "rows" / "uniform-24x-seed0"
    assert rows[0]["model_file"] == str(folder / "model.mbits") and (folder / "finetuned.pt").is_file()
    # the kept row is a run folder for `mixbits export`
    assert main(["export", str(folder), "-o", str(tmp_path / "again.mbits")]) == 0
    assert (tmp_path / "again.mbits").stat().st_size == (folder / "model.mbits").stat().st_size


def test_unserialisable_info_is_written_as_text_not_dropped(caplog):
    import numpy as np
    import torch

    from mixbits.pipeline.sweep_job import _jsonable

    with caplog.at_level("WARNING"):
        out = _jsonable({"t": torch.tensor([1, 2]), "n": np.float32(0.5), "s": {3}, "odd": object})
    assert out["t"] == [1, 2] and out["n"] == 0.5 and out["s"] == [3] and out["odd"] == repr(object)
    assert "written as its repr" in caplog.text


def test_a_method_refused_at_a_target_fails_before_the_float_training(tmp_path, monkeypatch):
    import mixbits.pipeline.sweep_job as sweep_job

    def no_training(*args, **kwargs):
        raise AssertionError("the float model trained before the methods' checks")

    monkeypatch.setattr(sweep_job, "fit_float_", no_training)
    config = _config(tmp_path, methods=("random", "exhaustive"), method_options={"exhaustive": {"limit": 1}})
    with pytest.raises(ValueError, match="exhaustive: more than 1 maximal assignments"):
        sweep(config)
    assert not (tmp_path / "sweep").exists()
