"""Post-training runs: no weight update anywhere, every method, bad combinations fail before any work."""

from __future__ import annotations

import json

import pytest
import torch

from mixbits.pipeline import RunConfig, Settings, SweepConfig
from mixbits.run import run_search
from mixbits.sweep import sweep

TINY = dict(float_epochs=2, search_epochs=2, train_subset=320, batch_size=32, device="cpu")


def test_post_training_settings():
    s = Settings(post_training=True)
    assert s.finetune_epochs == 0 and s.calibration is None
    assert Settings().finetune_epochs == 10
    assert Settings(post_training=True, finetune_epochs=0).finetune_epochs == 0
    assert Settings(post_training=True, search_epochs=1).search_epochs == 1
    with pytest.raises(ValueError, match="post_training updates no weight, but finetune_epochs = 3 was given"):
        Settings(post_training=True, finetune_epochs=3)
    with pytest.raises(ValueError, match="calibration must be >= 1"):
        Settings(post_training=True, calibration=0)
    with pytest.raises(ValueError, match="search_epochs must be >= 2"):
        Settings(search_epochs=1)


@pytest.mark.parametrize("method", ["hessian", "search", "hardsearch", "evolution", "random", "uniform", "fracbits",
                                    "pairwise", "probe"])
def test_every_method_runs_post_training_and_leaves_the_weights(tmp_path, method):
    options = {"hardsearch": {"steps": 5, "images": 64}, "evolution": {"evaluations": 6, "images": 64},
               "fracbits": {"steps": 5, "images": 64}, "pairwise": {"images": 64},
               "probe": {"methods": ["hessian", "evolution", "uniform"], "images": 64,
                         "method_options": {"evolution": {"evaluations": 6, "images": 64}}}}.get(method, {})
    out = tmp_path / "run"
    report = run_search(RunConfig(method=method, target="16x", out=str(out), post_training=True, calibration=96,
                                  method_options=options, **TINY), progress=False)
    assert report["final_test_accuracy"] == report["derived_test_accuracy"]
    flt = torch.load(out / "float.pt", weights_only=True)["state_dict"]
    tuned = torch.load(out / "finetuned.pt", weights_only=True)
    tuned = tuned.get("state_dict", tuned)
    for key, value in flt.items():
        if "running" in key or "num_batches" in key:
            continue  # BatchNorm statistics are re-estimated for the fixed bits
        assert torch.equal(tuned[key], value), key
    assert (out / "model.mbits").is_file()


def test_search_rejects_weight_training_post_training(tmp_path):
    with pytest.raises(ValueError, match="train_weights=True updates the weights, which post_training forbids"):
        run_search(RunConfig(method="search", target="16x", out=str(tmp_path / "run"), post_training=True,
                             method_options={"train_weights": True}, **TINY), progress=False)


def test_post_training_sweep_rows_are_not_fine_tuned(tmp_path):
    result = sweep(SweepConfig(methods=("hessian",), targets=("16x",), binary_point=False, plot=False,
                               post_training=True, out=str(tmp_path / "sweep"), **TINY))
    (row,) = result["rows"]
    assert row["finetune_epochs"] == 0 and row["test_accuracy"] == row["derived_accuracy"]


def test_cli_post_training_with_finetune_epochs_fails_before_any_work(tmp_path, capsys):
    from mixbits.cli import main

    out = tmp_path / "run"
    assert main(["search", "--post-training", "--finetune-epochs", "2", "--out", str(out)]) != 0
    assert "post_training updates no weight" in capsys.readouterr().err
    assert not out.exists()


def test_the_default_method_follows_the_regime():
    from mixbits.pipeline.config import DEFAULT_METHOD, DEFAULT_POST_TRAINING_METHOD

    assert RunConfig().method == DEFAULT_METHOD
    assert RunConfig(post_training=True).method == DEFAULT_POST_TRAINING_METHOD
    assert RunConfig(post_training=True, method="hessian").method == "hessian"
