"""``mixbits export`` and ``mixbits inspect`` on a run folder written the way ``mixbits search`` writes it."""

from __future__ import annotations

import json
import re

import pytest
import torch

from mixbits import PrepareConfig, prepare_
from mixbits.cli import main
from mixbits.export import load, read_mbits
from mixbits.models import create_model
from mixbits.report import build_report
from mixbits.runfiles import save_checkpoint, write_json

BITS = {"features.0": 8, "features.3": 1, "features.7": 2, "classifier": 16}
KWARGS = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": 4}


@pytest.fixture
def run_folder(tmp_path):
    """A finished run of a small digits CNN with one excluded layer kept in float."""
    run = tmp_path / "run"
    run.mkdir()
    model = create_model("digits_cnn", **KWARGS)
    bits = {k: v for k, v in BITS.items() if k != "classifier"}
    space = prepare_(model, PrepareConfig(exclude=("classifier",)))
    space.fix_(bits)
    write_json(run / "settings.json", {"model": "digits_cnn", "data": "digits", "exclude": ["classifier"], "pins": {}})
    write_json(run / "report.json", build_report(space, bits, model="digits_cnn"))
    save_checkpoint(run / "finetuned.pt", {"model": "digits_cnn", "model_kwargs": KWARGS, "data": "digits",
                                           "data_root": None, "bits": bits, "candidates": [1, 2, 4, 8, 16, 32],
                                           "state_dict": model.state_dict(), "test_accuracy": 0.5})
    return run, model, space, bits


def test_export_command_prints_promised_and_measured(run_folder, tmp_path, capsys):
    run, model, space, bits = run_folder
    out = tmp_path / "m.mbits"
    assert main(["export", str(run), "-o", str(out), "--onnx", "--onnx-float", "--accuracy"]) == 0
    text = capsys.readouterr().out
    flat = re.sub(" {2,}", "  ", text)  # the column width depends on the longest label
    promised = space.cost.model_bits(bits) / 8
    size = out.stat().st_size
    assert f"promised size (report)  {promised:,.0f} B" in flat
    assert f"measured file size  {size:,} B" in flat
    assert "(2% + 4 KiB): ok" in text
    assert "reload max |logit diff|  0 " in flat
    assert "(identical)" in text
    onnx_line = next(line for line in text.splitlines() if line.startswith("onnx max |output diff|"))
    assert float(onnx_line.split()[4]) <= 1e-4
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.float.onnx").is_file()
    float_line = next(line for line in text.splitlines() if line.startswith("float onnx max |output diff|"))
    assert float(float_line.split()[5]) <= 1e-4
    # the packed graph is about the .mbits file's size
    assert (tmp_path / "m.onnx").stat().st_size <= 1.05 * size + 8192
    f = read_mbits(out)
    assert {r.name: r.bits for r in f.layers} == bits
    assert [r.key for r in f.floats][-2:] == ["classifier.weight", "classifier.bias"]  # excluded: kept in float
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load(out)(x), model.eval()(x))


def test_export_default_output_and_inspect(run_folder, capsys):
    run, _, space, bits = run_folder
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    assert main(["inspect", str(run / "model.mbits")]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].split() == ["layer", "kind", "shape", "bits", "bytes"]
    assert text.splitlines()[2].split() == ["features.3", "Conv2d", "8x4x3x3", "1", "52"]  # 288 bits + 8 scales
    assert "zoo digits_cnn" in text and "within 2% + 4 KiB" in text
    assert main(["inspect", "--json", str(run / "model.mbits")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {r["name"]: r["bits"] for r in info["layers"]} == bits
    assert info["totals"]["promised_bytes"] == space.cost.model_bits(bits) / 8


def test_command_errors_are_one_line(run_folder, tmp_path, capsys):
    run, *_ = run_folder
    assert main(["export", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"mixbits export: error: run folder '{tmp_path / 'nowhere'}' does not exist"
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty")]) == 2
    assert "has no finetuned.pt" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["export", str(run), "-o", str(tmp_path / "afile" / "m.mbits")]) == 2
    assert "is a file: give -o a path in a folder" in capsys.readouterr().err
    assert main(["export", str(run), "-o", str(tmp_path / "new" / "dir" / "m.mbits")]) == 0  # folders are made
    data = (tmp_path / "new" / "dir" / "m.mbits").read_bytes()
    (tmp_path / "cut.mbits").write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    assert main(["inspect", str(tmp_path / "cut.mbits")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "truncated or corrupted" in err


def test_export_other_onnx_forms_and_normalisation(run_folder, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("qonnx")
    run, *_ = run_folder
    out = tmp_path / "m.mbits"
    assert main(["export", str(run), "-o", str(out), "--onnx-normalize"]) == 2
    assert "add --onnx" in capsys.readouterr().err
    assert main(["export", str(run), "-o", str(out), "--matmulnbits"]) == 2
    assert "add --onnx" in capsys.readouterr().err
    assert main(["export", str(run), "-o", str(out), "--onnx", "--matmulnbits", "--qonnx", "--onnx-normalize",
                 "--accuracy"]) == 0
    text = capsys.readouterr().out
    for label in ("onnx max |output diff|", "qonnx max |output diff|"):
        line = next(line for line in text.splitlines() if line.startswith(label))
        assert float(line[len(label):].split()[0]) <= 1e-4, text
    assert read_mbits(out).manifest["preprocessing"]["mean"] == [0.3]  # the digits data set's normalisation
    assert (tmp_path / "m.onnx").is_file() and (tmp_path / "m.qonnx.onnx").is_file()
    assert load(out).mixbits_preprocessing.class_names == tuple("0123456789")


def test_inspect_into_a_closed_pipe_exits_quietly(tmp_path):
    """`mixbits inspect --json FILE | head`: a reader that has gone is no error and no traceback."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from mixbits import export_model

    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    space = prepare_(model, PrepareConfig())
    export_model(model, space, tmp_path / "m.mbits", bits={"0": 2})
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "mixbits", "inspect", "--json", str(tmp_path / "m.mbits")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before anything is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_export_and_inspect_a_run_with_bits_per_structure(tmp_path, capsys):
    """A run searched at ``group:4``: bits are lists in the checkpoint, settings.json names the granularity."""
    run = tmp_path / "run"
    run.mkdir()
    model = create_model("digits_cnn", **KWARGS)
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8, 16, 32), granularity="group:4"))
    assert [(l.name, l.num_groups) for l in space.layers] == [
        ("features.0", 1), ("features.3", 2), ("features.7", 2), ("classifier", 3)]
    bits = {"features.0": 8, "features.3": [1, 2], "features.7": [16, 4], "classifier": [2, 32, 1]}
    space.fix_(bits)
    write_json(run / "settings.json", {"model": "digits_cnn", "data": "digits", "exclude": [], "pins": {},
                                       "granularity": "group:4"})
    save_checkpoint(run / "finetuned.pt", {"model": "digits_cnn", "model_kwargs": KWARGS, "data": "digits",
                                           "data_root": None, "bits": bits, "candidates": [1, 2, 4, 8, 16, 32],
                                           "state_dict": model.state_dict(), "test_accuracy": 0.5})
    out = tmp_path / "g.mbits"
    assert main(["export", str(run), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(2% + 4 KiB): ok" in text and "reload max |logit diff|    0 " in text
    f = read_mbits(out)
    assert {r.name: r.bits for r in f.layers} == {"features.0": 8, "features.3": (1, 2), "features.7": (16, 4),
                                                  "classifier": (2, 32, 1)}
    assert f.manifest["layer_groups"] == {"features.3": 4, "features.7": 4, "classifier": 4}
    assert 8 * (f.file_bytes - f.header_bytes) == space.cost.model_bits(bits) == 14160  # every run fills its bytes
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(load(out)(x), model.eval()(x))
    assert main(["inspect", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "kind", "shape", "bits", "group_size", "structures", "bytes"]
    assert lines[1].split() == ["features.0", "Conv2d", "4x1x3x3", "8", "-", "1", "44"]
    # 566 bytes: 32 + 8 (2 bits: codes, scales), 512 (32 bits), 8 + 4 (1 bit), 2 index bytes
    assert lines[4].split()[3:] == ["mixed", "1-32", "(mean", "13.80)", "1:1", "2:1", "32:1", "4", "3", "566"]
    assert main(["inspect", "--json", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"][3]["bits"] == [2, 32, 1] and info["layers"][3]["group_size"] == 4
