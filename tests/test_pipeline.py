"""The one pipeline: ``mixbits search`` and a one-row ``mixbits sweep`` are the same stages."""

from __future__ import annotations

import json

import pytest
import torch

from mixbits.pipeline import RunConfig, Settings, SweepConfig, finetune_epochs, held_out_unseen
from mixbits.run import run_search
from mixbits.sweep import sweep

TINY = dict(float_epochs=2, search_epochs=2, finetune_epochs=1, train_subset=320, batch_size=32, device="cpu")


@pytest.mark.parametrize("method, seed", [("hessian", 0), ("search", 3)])
def test_a_search_run_and_a_one_row_sweep_agree(tmp_path, method, seed):
    report = run_search(RunConfig(method=method, target="16x", seed=seed, out=str(tmp_path / "run"), **TINY),
                        progress=False)
    result = sweep(SweepConfig(methods=(method,), targets=("16x",), seeds=(seed,), binary_point=False, plot=False,
                               out=str(tmp_path / "sweep"), **TINY))
    (row,) = result["rows"]
    assert json.loads((tmp_path / "run" / "bits.json").read_text()) == row["bits"]
    assert report["float_test_accuracy"] == result["float_accuracy"]
    assert report["derived_test_accuracy"] == row["derived_accuracy"]
    assert report["final_test_accuracy"] == row["test_accuracy"]
    # Both paths ran on this machine: they must agree exactly (above). The bits themselves depend on the trained
    # float weights, which differ between CPU kernels (ATEN_CPU_CAPABILITY) and thread counts, so only their
    # validity is pinned here.
    assert set(row["bits"]) == {"classifier", "features.0", "features.3", "features.7"}
    assert row["quantized_bits"] <= row["budget_bits"] and row["weight_compression"] >= 16.0
    # the float model never saw the held-out part that ranked the allocations, and its checkpoints say so
    for folder in ("run", "sweep"):
        record = torch.load(tmp_path / folder / "float.pt", weights_only=True)
        assert held_out_unseen(record, RunConfig(**TINY)), folder
        assert not held_out_unseen(record, RunConfig(**{**TINY, "held_out_fraction": 0.25}))


def test_the_float_model_trains_on_the_training_split_without_its_held_out_part(tmp_path, monkeypatch):
    from mixbits.pipeline import search_job, sweep_job

    seen = []

    def spy(fit):
        def wrapped(model, settings, loader, *args, **kwargs):
            seen.append(len(loader.x))
            return fit(model, settings, loader, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(search_job, "fit_float_", spy(search_job.fit_float_))
    monkeypatch.setattr(sweep_job, "fit_float_", spy(sweep_job.fit_float_))
    run_search(RunConfig(method="uniform", target="16x", out=str(tmp_path / "run"), **TINY), progress=False)
    sweep(SweepConfig(methods=("uniform",), targets=("16x",), binary_point=False, plot=False,
                      out=str(tmp_path / "sweep"), **TINY))
    assert seen == [256, 256]  # 320 training images, the held-out fifth (64) left out


def test_compute_matched_epochs():
    s = Settings(search_epochs=10, finetune_epochs=5)
    assert finetune_epochs(s, 0.0) == (0.0, 15)  # a method that trained no weights is fine-tuned longer
    assert finetune_epochs(s, 10.0) == (10.0, 5)
    assert finetune_epochs(Settings(search_epochs=10, finetune_epochs=5, finetune_from="float"), 10.0) == (0.0, 15)
    assert finetune_epochs(Settings(search_epochs=10, finetune_epochs=5, compute_matched=False), 0.0) == (0.0, 5)


def test_run_and_sweep_settings_share_one_type():
    shared = {f for f in Settings.__dataclass_fields__}
    assert shared <= set(RunConfig.__dataclass_fields__) and shared <= set(SweepConfig.__dataclass_fields__)
    with pytest.raises(ValueError, match="finetune_from"):
        RunConfig(finetune_from="search")
    with pytest.raises(ValueError, match="search_epochs"):
        SweepConfig(search_epochs=1)
