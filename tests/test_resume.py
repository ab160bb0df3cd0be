"""Resume after SIGKILL: a real ``mixbits search`` process is killed mid-run and continued.

The resumed run must end with exactly the bits and accuracies of an uninterrupted
run with the same seed (CPU, same thread count: bitwise deterministic).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mixbits import SearchConfig, TrainConfig, fit, prepare_, search
from mixbits.data import TensorLoader

# Tiny but complete: every stage has at least two epochs of a few steps.
ARGS = ["--method", "search", "--float-epochs", "2", "--search-epochs", "3", "--finetune-epochs", "2", "--train-subset", "600",
        "--batch-size", "20", "--target", "16x", "--seed", "3", "--device", "cpu", "-q"]



def _mixbits(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    return subprocess.Popen([sys.executable, "-m", "mixbits", "search", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(path: Path, text: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.is_file() and text in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {text!r} appeared: {proc.communicate()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"{text!r} did not appear in {path} within {timeout} s")


def _outcome(folder: Path) -> tuple[dict, dict, list]:
    report = json.loads((folder / "report.json").read_text())
    accs = {k: report[k] for k in ("float_test_accuracy", "derived_test_accuracy", "final_test_accuracy")}
    history = json.loads((folder / "search.json").read_text())["history"]
    return json.loads((folder / "bits.json").read_text()), accs, [h["multiplier"] for h in history]


def test_run_killed_in_every_stage_resumes_to_the_same_result(tmp_path):
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    ref = _mixbits(*ARGS, "--out", str(reference))
    proc = _mixbits(*ARGS, "--out", str(killed))
    # SIGKILL right after the first checkpoint of each stage, i.e. in the middle of its second
    # epoch: the float training, then (resumed) the search, then (resumed) the fine-tuning
    for stage in ("float", "search", "finetune"):
        _wait_for(killed / "run.log", f"checkpoint: {stage} epoch 1 saved", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        assert not (killed / "report.json").exists(), f"the run finished before the kill in the {stage} stage"
        proc = _mixbits("--resume", str(killed))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    out_ref, err_ref = ref.communicate(timeout=300)
    assert ref.returncode == 0, err_ref

    bits, accs, lams = _outcome(killed)
    bits_ref, accs_ref, lams_ref = _outcome(reference)
    assert bits == bits_ref
    assert accs == accs_ref
    assert lams == lams_ref
    assert not list(killed.glob(".*.tmp")), "temporary files of interrupted writes are cleaned up"
    resumed_at = re.findall(r"resuming \S+ at the (\w+) stage", (killed / "run.log").read_text())
    assert resumed_at == ["float", "search", "finetune"]
    # a finished run resumes to its report without training again
    from mixbits.run import resume_run

    assert resume_run(killed, progress=False)["final_test_accuracy"] == accs_ref["final_test_accuracy"]


def test_resume_refuses_changed_settings(tmp_path, capsys):
    from mixbits.cli import main

    (tmp_path / "settings.json").write_text("{}")
    assert main(["search", "--resume", str(tmp_path), "--target", "8x"]) == 2
    assert "drop --target" in capsys.readouterr().err
    assert main(["search", "--resume", str(tmp_path / "missing")]) == 2
    assert "not a mixbits run folder" in capsys.readouterr().err
    (tmp_path / "settings.json").write_text('{"target": "8x"}')
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert "has no checkpoint (resume.pt)" in capsys.readouterr().err
    (tmp_path / "resume.pt").write_bytes(b"garbage")
    assert main(["search", "--resume", str(tmp_path)]) == 2
    assert "not a readable PyTorch checkpoint" in capsys.readouterr().err


def _tiny_data(seed: int = 0, n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + 2 * (x[:, 0, 0, 0] > 0).long()
    return x, y


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(8 * 16, 4))


def test_fit_resume_state_continues_exactly():
    x, y = _tiny_data()
    config = TrainConfig(epochs=4, lr=0.05)
    full = _tiny_model()
    h_full = fit(full, TensorLoader(x, y, batch_size=16, shuffle=True, seed=1), config)

    saved: list = []
    first = _tiny_model()
    fit(first, TensorLoader(x, y, batch_size=16, shuffle=True, seed=1), config,
        on_checkpoint=lambda s: saved.append(torch.load(_roundtrip(s), weights_only=True)))
    resumed = _tiny_model()  # a fresh process would start from a fresh model and a fresh loader
    torch.manual_seed(123)
    h = fit(resumed, TensorLoader(x, y, batch_size=16, shuffle=True, seed=1), config, resume=saved[1])
    assert h == h_full
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_search_resume_state_continues_exactly():
    x, y = _tiny_data()
    config = SearchConfig(target="8x", epochs=4, warmup_epochs=1, gumbel=True)

    def run(resume=None, sink=None):
        model = _tiny_model()
        space = prepare_(model)
        tr = TensorLoader(x[:64], y[:64], batch_size=16, shuffle=True, seed=1)
        ho = TensorLoader(x[64:], y[64:], batch_size=16, shuffle=True, seed=2)
        torch.manual_seed(7)
        return search(model, space, tr, ho, config, resume=resume, on_checkpoint=sink), space

    ref, ref_space = run()
    saved: list = []
    run(sink=lambda s: saved.append(torch.load(_roundtrip(s), weights_only=True)))
    res, space = run(resume=saved[2])
    assert res.bits == ref.bits
    assert res.multiplier == ref.multiplier
    assert [h["multiplier"] for h in res.history] == [h["multiplier"] for h in ref.history]
    for a, b in zip(ref_space.parameters(), space.parameters()):
        assert torch.equal(a, b)


def test_resume_state_of_another_run_is_refused():
    x, y = _tiny_data()
    saved: list = []
    fit(_tiny_model(), TensorLoader(x, y, batch_size=16), TrainConfig(epochs=1, lr=0.05), on_checkpoint=saved.append)
    with pytest.raises(ValueError, match="does not match"):
        fit(_tiny_model(), TensorLoader(x, y, batch_size=32), TrainConfig(epochs=1, lr=0.05), resume=saved[0])


def _roundtrip(state: dict):
    import io

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return buf
