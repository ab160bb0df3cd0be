"""Bad input to ``mixbits search``: a clear one-line error, and the run folder keeps its last good checkpoint."""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path

import pytest
import torch

import mixbits.train
from mixbits import NonFiniteLossError
from mixbits.cli import main
from mixbits.commands.options import resolve_config
from mixbits.run import RESUME_FILE, RunConfig, resume_run, run_search
from mixbits.runfiles import load_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = dict(method="search", float_epochs=2, search_epochs=3, finetune_epochs=1, train_subset=300, batch_size=30, target="16x",
            device="cpu")



@pytest.mark.parametrize("option, value, kind", [("--model", "resnet9000", "model"), ("--data", "imagenet-22k", "data set"),
                                                 ("--method", "magic", "method")])
def test_unknown_names_list_the_known_ones(tmp_path, capsys, option, value, kind):
    assert main(["search", option, value, "--out", str(tmp_path / "run"), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"unknown {kind} {value!r}; known:" in err
    assert {"model": "digits_cnn", "data set": "digits", "method": "search"}[kind] in err


def test_missing_checkpoint_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["search", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert "float checkpoint" in err and "nope.pt" in err and "does not exist" in err
    assert not out.exists()


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["search", "--out", str(blocker / "run"), "-q", "--float-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot write the output folder" in err and "--out" in err


def test_unknown_config_key_and_example_config(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('target = "16x"\nsearch_epoch = 4\n')
    assert main(["search", "-c", str(bad), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown keys ['search_epoch']" in err and "search_epochs" in err
    # the shipped example resolves, and command-line options override it
    args = argparse.Namespace(config=str(CONFIGS / "digits.toml"), target="12x")
    config = resolve_config(RunConfig, args, skip=set())
    assert config.target == "12x" and config.pins == {"features.0": 8} and config.candidates == (1, 2, 4, 8, 16, 32)


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if isinstance(obj, dict) and obj.get("stage") == "search" and (obj.get("state") or {}).get("epoch") == 2:
            f.write(b"\0" * 100)  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left on device.*previous checkpoint is kept.*--resume"):
        run_search(RunConfig(**TINY, out=str(out)), progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    assert not list(out.glob(".*.tmp")), "the half-written temporary file is removed"
    state = load_checkpoint(out / RESUME_FILE)
    assert state["stage"] == "search" and state["state"]["epoch"] == 1
    # once there is space again the run continues to the same result as an uninterrupted one
    report = resume_run(out, progress=False)
    reference = run_search(RunConfig(**TINY, out=str(tmp_path / "reference")), progress=False)
    assert json.loads((out / "bits.json").read_text()) == json.loads((tmp_path / "reference" / "bits.json").read_text())
    assert report["final_test_accuracy"] == reference["final_test_accuracy"]


class _NanAfter:
    """torch.nn.functional whose cross_entropy returns NaN from the ``n``-th call on."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def cross_entropy(self, *args, **kwargs):
        self.calls += 1
        loss = torch.nn.functional.cross_entropy(*args, **kwargs)
        return loss * float("nan") if self.calls >= self.n else loss


def test_nan_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    monkeypatch.setattr(mixbits.train, "F", _NanAfter(15))  # float training: 10 steps per epoch, NaN in epoch 2
    with pytest.raises(NonFiniteLossError, match="epoch 2.*keeps the last good checkpoint"):
        run_search(RunConfig(**TINY, out=str(out)), progress=False)
    state = load_checkpoint(out / RESUME_FILE)
    assert state["stage"] == "float" and state["state"]["epoch"] == 1
    monkeypatch.setattr(mixbits.train, "F", _NanAfter(1))
    assert main(["search", "--resume", str(out), "-q"]) == 2
    assert "loss became nan" in capsys.readouterr().err
    assert load_checkpoint(out / RESUME_FILE)["state"]["epoch"] == 1


def test_a_method_that_cannot_run_at_this_budget_fails_before_the_float_training(tmp_path, monkeypatch):
    """``exhaustive`` with more assignments than its limit: refused before training, nothing written."""
    import mixbits.pipeline.search_job as search_job

    def no_training(*args, **kwargs):
        raise AssertionError("the float model trained before the method's check")

    monkeypatch.setattr(search_job, "fit_float_", no_training)
    out = tmp_path / "run"
    config = RunConfig(**{**TINY, "method": "exhaustive", "method_options": {"limit": 1}}, out=str(out))
    with pytest.raises(ValueError, match="exhaustive: more than 1 maximal assignments"):
        run_search(config, progress=False)
    assert not out.exists()
    # the default method's options too: a bad refinement radius, a candidate method that does not exist
    for options, match in (({"refine": {"radius": 0}}, "radius must be an integer >= 1"),
                           ({"methods": ["hessian", "nosuch"]}, "nosuch"),
                           ({"refine": {"radius": 2}, "stepz": 3}, "unknown options")):
        config = RunConfig(**{**TINY, "method": "probe", "method_options": options}, out=str(out))
        with pytest.raises((ValueError, KeyError), match=match):
            run_search(config, progress=False)
        assert not out.exists()
