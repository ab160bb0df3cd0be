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
    assert summary["train_samples"] == 400 and len(summary["history"]) == 2
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
    (["--train-subset", "0"], "train_subset must be >= 1"),
    (["--epochs", "0"], "epochs must be >= 1"),
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
