"""``mixbits train``: the checkpoint it writes is what ``mixbits search --checkpoint`` starts from."""

from __future__ import annotations

import json

import pytest
import torch

from mixbits.cli import main

SEARCH_FAST = ["--search-epochs", "2", "--finetune-epochs", "1", "-q"]


def test_train_writes_a_checkpoint_that_search_starts_from(tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train", "--data", "digits", "--model", "digits_cnn", "--epochs", "2", "--lr", "0.05",
                 "--label-smoothing", "0.1", "--train-subset", "400", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    ckpt = torch.load(out / "float.pt", weights_only=True)
    assert {"model", "model_kwargs", "data", "state_dict", "test_accuracy"} <= set(ckpt)
    assert ckpt["model_kwargs"] == {"in_channels": 1, "num_classes": 10, "input_size": 8}
    summary = json.loads((out / "train.json").read_text())
    # the held-out fifth that `mixbits search` ranks allocations on is left out, and the checkpoint says so
    assert (summary["train_samples"], summary["held_out_left_out"], len(summary["history"])) == (320, 80, 2)
    assert (ckpt["held_out_fraction"], ckpt["train_subset"], ckpt["data"]) == (0.2, 400, "digits")
    assert summary["test_accuracy"] == ckpt["test_accuracy"] > 0.5
    assert f"float test accuracy {100 * ckpt['test_accuracy']:.2f}%" in printed and "epoch 2/2" in printed
    assert json.loads((out / "settings.json").read_text())["label_smoothing"] == 0.1
    assert "--train-subset 400" in printed  # the suggested search command keeps the subset

    run = tmp_path / "search"
    assert main(["search", "--checkpoint", str(out / "float.pt"), "--train-subset", "400", "--target", "12x", "--batch-size", "50",
                 "--out", str(run), *SEARCH_FAST]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["float_test_accuracy"] == pytest.approx(ckpt["test_accuracy"])
    assert not (run / "float.pt").exists()  # started from the checkpoint, no float training
    assert "does not record leaving out the held-out part" not in (run / "run.log").read_text()


def test_a_checkpoint_trained_on_the_held_out_part_is_flagged_by_search(tmp_path, capsys):
    out = tmp_path / "train"
    assert main(["train", "--epochs", "1", "--train-subset", "200", "--train-on-held-out", "--out", str(out),
                 "-q"]) == 0
    summary = json.loads((out / "train.json").read_text())
    ckpt = torch.load(out / "float.pt", weights_only=True)
    assert (summary["train_samples"], summary["held_out_left_out"], ckpt["held_out_fraction"]) == (200, 0, None)
    run = tmp_path / "search"
    assert main(["search", "--checkpoint", str(out / "float.pt"), "--train-subset", "200", "--target", "12x",
                 "--batch-size", "50", "--method", "hessian", "--out", str(run), *SEARCH_FAST]) == 0
    log = (run / "run.log").read_text()
    assert "does not record leaving out the held-out part of the training split (held_out_fraction 0.2 of a " \
           "200-image subset)" in log


def test_a_train_run_from_before_the_held_out_setting_resumes_on_the_whole_split(tmp_path):
    from mixbits.commands.train import load_train_settings

    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({"data": "digits", "model": "digits_cnn", "epochs": 2}))
    assert load_train_settings(folder).train_on_held_out is True
    (folder / "settings.json").write_text(json.dumps({"data": "digits", "epochs": 2, "held_out_fraction": 0.25}))
    config = load_train_settings(folder)
    assert (config.train_on_held_out, config.held_out_fraction) == (False, 0.25)


def test_train_reads_a_toml_config_and_the_command_line_wins(tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text('data = "digits"\nepochs = 3\ntrain_subset = 200\nbatch_size = 50\nseed = 4\n')
    out = tmp_path / "t"
    assert main(["train", "-c", str(cfg), "--epochs", "1", "--out", str(out), "-q"]) == 0
    s = json.loads((out / "settings.json").read_text())
    assert (s["epochs"], s["train_subset"], s["batch_size"], s["seed"]) == (1, 200, 50, 4)
    assert len(json.loads((out / "train.json").read_text())["history"]) == 1


@pytest.mark.parametrize("args,message", [
    (["--data", "nope"], "unknown data set 'nope'; known:"),
    (["--model", "resnet21"], "unknown model 'resnet21'; known:"),
    (["--train-subset", "0"], "train_subset = 0 in the command line: input should be greater than or equal to 1"),
    (["--epochs", "0"], "epochs = 0 in the command line: input should be greater than or equal to 1"),
    (["--data", "cifar10"], "cifar10 needs --data-root"),
])
def test_train_errors_are_one_line_with_exit_status_2(tmp_path, capsys, args, message):
    assert main(["train", *args, "--out", str(tmp_path / "x"), "-q"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_user_model_and_data_as_module_function_from_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "my_project_cli.py").write_text('''
import torch
from torch import nn

def data(root=None):
    g = torch.Generator().manual_seed(0)
    y = torch.arange(240) % 3
    x = (torch.rand(240, 1, 6, 6, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.25)  # separable by brightness
    return (x[:180], y[:180]), (x[180:], y[180:])

def model(in_channels, num_classes, input_size):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8 * input_size * input_size, num_classes))
''')
    out = tmp_path / "train"
    assert main(["train", "--data", "my_project_cli:data", "--model", "my_project_cli:model", "--epochs", "3",
                 "--batch-size", "30", "--out", str(out), "-q"]) == 0
    assert torch.load(out / "float.pt", weights_only=True)["model"] == "my_project_cli:model"
    run = tmp_path / "search"
    assert main(["search", "--data", "my_project_cli:data", "--model", "my_project_cli:model", "--checkpoint",
                 str(out / "float.pt"), "--batch-size", "30", "--target", "8x", "--out", str(run),
                 *SEARCH_FAST]) == 0
    report = json.loads((run / "report.json").read_text())
    assert report["model"] == "my_project_cli:model" and report["totals"]["quantized_bits"] <= report["budget_bits"]


def _train_args(out):
    return ["train", "--epochs", "12", "--train-subset", "900", "--batch-size", "30", "--lr", "0.05",
            "--device", "cpu", "--out", str(out), "-q"]


def test_train_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import mixbits

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(mixbits.__file__)),
                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mixbits", *_train_args(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "resume.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run, after at least one epoch's checkpoint
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    assert not (killed / "float.pt").exists()
    epoch = torch.load(killed / "resume.pt", weights_only=True)["fit"]["epoch"]
    assert 1 <= epoch < 12
    assert main(["train", "--resume", str(killed), "-q"]) == 0
    assert not (killed / "resume.pt").exists()  # removed once complete

    whole = tmp_path / "whole"
    assert main(_train_args(whole)) == 0
    a = torch.load(killed / "float.pt", weights_only=True)
    b = torch.load(whole / "float.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert a["test_accuracy"] == b["test_accuracy"]
    h1 = json.loads((killed / "train.json").read_text())["history"]
    h2 = json.loads((whole / "train.json").read_text())["history"]
    assert h1 == h2 and len(h1) == 12


def test_train_resume_refuses_new_settings_and_a_second_run_needs_force(tmp_path, capsys):
    out = tmp_path / "t"
    args = ["train", "--epochs", "1", "--train-subset", "200", "--batch-size", "50", "--out", str(out), "-q"]
    assert main(args) == 0
    assert main(["train", "--resume", str(out), "--lr", "0.01"]) == 2
    assert "drop --lr (only --device may change)" in capsys.readouterr().err
    assert main(args) == 2
    assert "already holds a run (settings.json)" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    assert main(["train", "--resume", str(out), "-q"]) == 0  # complete: nothing to do


@pytest.mark.parametrize("command", ["train", "search"])
@pytest.mark.parametrize("nan_step", [0, 5])  # in the first epoch (nothing saved yet), in the second
def test_nan_message_says_what_to_do(tmp_path, capsys, monkeypatch, command, nan_step):
    import mixbits.train

    real, calls = mixbits.train.global_mean, []

    def diverge(loss, scale, device):
        calls.append(1)
        return float("nan") if len(calls) == nan_step + 1 else real(loss, scale, device)

    monkeypatch.setattr(mixbits.train, "global_mean", diverge)
    out = tmp_path / "run"
    base = ["--train-subset", "200", "--batch-size", "50", "--out", str(out), "-q", "--device", "cpu"]
    extra = ["--epochs", "3"] if command == "train" else ["--float-epochs", "3", "--search-epochs", "2",
                                                        "--finetune-epochs", "1"]
    assert main([command, *base, *extra]) == 2
    err = capsys.readouterr().err
    assert "float: the loss became nan at epoch" in err and "--force" in err and "lower" in err
    if nan_step == 0:
        assert "No epoch finished, so there is nothing to resume" in err and "resume.pt" not in err
        assert not (out / "resume.pt").exists()
    else:
        assert "resume.pt" in err and "--resume repeats the same settings" in err
        assert (out / "resume.pt").exists()
