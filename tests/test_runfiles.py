"""The run folder: one writer at a time, no silent overwrite, durable writes, no temporary left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from mixbits import runfiles
from mixbits.cli import main
from mixbits.runfiles import RunFolderBusyError, RunLock, claim_run_dir, save_checkpoint, write_json

FAST = ["--float-epochs", "1", "--search-epochs", "2", "--finetune-epochs", "1", "--train-subset", "200",
        "--batch-size", "50", "--target", "8x", "--device", "cpu", "-q"]
HOLD = ("import fcntl, os, sys, time\n"
        "fd = os.open(os.path.join(sys.argv[1], '.lock'), os.O_RDWR | os.O_CREAT)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\nprint('locked', flush=True)\n"
        "time.sleep(60)\n")


@pytest.fixture
def held(tmp_path):
    """A run folder whose lock another process holds."""
    folder = tmp_path / "run"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield folder, proc.pid
    proc.kill()
    proc.wait()


def test_a_second_writer_is_refused(held, capsys):
    folder, pid = held
    assert main(["search", "--out", str(folder), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"run folder {str(folder)!r} is in use by another mixbits process (pid {pid})" in err
    assert sorted(p.name for p in folder.iterdir()) == [".lock"]  # nothing written
    (folder / "settings.json").write_text(json.dumps({"out": str(folder)}))
    (folder / "resume.pt").write_bytes(b"not read before the lock")
    assert main(["search", "--resume", str(folder)]) == 2  # --resume of a run still going
    assert "is in use by another mixbits process" in capsys.readouterr().err
    assert main(["sweep", "--out", str(folder), "--float-epochs", "1", "-q"]) == 2
    assert "is in use by another mixbits process" in capsys.readouterr().err


def test_the_lock_is_released_after_a_run_and_after_a_kill(tmp_path):
    folder = tmp_path / "run"
    with claim_run_dir(folder, markers=()):
        with pytest.raises(RunFolderBusyError):
            RunLock(folder).acquire()
    RunLock(folder).acquire().release()  # released on exit
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()
    with pytest.raises(RunFolderBusyError):
        RunLock(folder).acquire()
    proc.kill()  # SIGKILL: the kernel drops the lock
    proc.wait()
    RunLock(folder).acquire().release()


def test_out_at_an_existing_run_needs_force(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "settings.json").write_text('{"old": true}')
    (out / "report.html").write_text("an old report")
    assert main(["search", "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"{str(out)!r} already holds a run (settings.json): continue it with --resume {out}" in err
    assert "--force" in err and (out / "settings.json").read_text() == '{"old": true}'
    assert main(["search", "--out", str(out), "--force", *FAST]) == 0
    assert not (out / "report.html").exists()  # the old run's files are gone, not mixed with the new ones
    assert json.loads((out / "settings.json").read_text())["target"] == "8x"
    assert (out / "model.mbits").is_file()


def test_sweep_checks_targets_before_training_and_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "sweep"
    t0 = time.time()
    assert main(["sweep", "--targets", "8x,1000x", "--out", str(out), "--float-epochs", "30", "-q"]) == 2
    assert "unreachable" in capsys.readouterr().err and time.time() - t0 < 20
    assert not out.exists()


def test_dead_writers_temporaries_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.json.{int(dead.stdout)}.abc123.tmp"
    live = tmp_path / f".x.json.{os.getpid()}.def456.tmp"
    stale.write_text("half")
    live.write_text("being written")
    write_json(tmp_path / "x.json", {"a": 1})
    assert not stale.exists() and live.exists()
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": 1}


def test_checkpoints_are_fsynced_file_and_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        return real(fd)

    monkeypatch.setattr(runfiles.os, "fsync", spy)
    save_checkpoint(tmp_path / "c.pt", {"a": 1})
    if os.path.exists("/proc/self/fd"):
        assert any(p.endswith(".tmp") for p in synced) and str(tmp_path) in synced
    else:
        assert len(synced) == 2
