"""The one pipeline: ``mixbits search`` and a one-row ``mixbits sweep`` are the same stages."""

from __future__ import annotations

import json

import pytest

from mixbits.pipeline import RunConfig, Settings, SweepConfig, finetune_epochs
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
    if method == "hessian":  # the sweep's numbers before search and sweep shared the pipeline
        # (the four-level 2-bit quantizer and the exact derivation moved features.0 from 16 to 32 bits)
        assert row["bits"] == {"classifier": 8, "features.0": 32, "features.3": 2, "features.7": 1}
        assert (result["float_accuracy"], row["derived_accuracy"], row["test_accuracy"]) == (
            0.9331476323119777, 0.9331476323119777, 0.935933147632312)


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
