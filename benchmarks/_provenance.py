"""What ran: the commit this process loaded, whether its tree was dirty, and the machine.

Every benchmark stamps its rows and result files with :func:`provenance` (or
:func:`stamp`). The commit is read ONCE, when this module is first imported, so a
row written hours later still names the code the process runs, even if HEAD moved
meanwhile; ``dirty`` says whether tracked files differed from that commit then (an
uncommitted change may be in the numbers). Result files under ``benchmarks/results/`` do not
count: a benchmark that appends rows, then runs again, still runs committed code.

    from _provenance import provenance, stamp   # benchmarks/ is on sys.path when run as a script
    row = {**stamp(), "accuracy": acc}           # {"commit": "4875b83", "dirty": False, ...}
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["provenance", "stamp", "command_line", "describe"]

_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=_ROOT, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None  # a copy without git still runs; it says "unknown"
    return out.stdout.strip()


def _load_time_state() -> dict[str, Any]:
    commit = _git("rev-parse", "--short", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results")
    return {"commit": commit or "unknown", "dirty": None if status is None else bool(status)}


_STATE = _load_time_state()


def _cpu_capability() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - torch is optional for the provenance itself
        return "unknown"


def provenance() -> dict[str, Any]:
    """The full record: commit and dirty flag (at import), machine, library versions, threads, command."""
    record = dict(_STATE)
    try:
        import torch

        record["torch"] = torch.__version__
        record["threads"] = torch.get_num_threads()
        record["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except Exception:  # noqa: BLE001
        record["torch"] = "unavailable"
    record.update(python=platform.python_version(), machine=f"{platform.machine()}, {os.cpu_count()} cores",
                  cpu_capability=_cpu_capability(), command=command_line(),
                  utc=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    return record


def stamp() -> dict[str, Any]:
    """The two fields every result row carries: ``commit`` and ``dirty``."""
    return dict(_STATE)


def command_line() -> str:
    """The command that started this process, as a shell would take it."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def describe() -> str:
    """One line for a Markdown result file: command, commit (+dirty), machine, torch."""
    p = provenance()
    dirty = " (tree dirty: uncommitted changes)" if p["dirty"] else ""
    return (f"`{p['command']}` at commit `{p['commit']}`{dirty}, {p['utc']}; {p['machine']}, "
            f"torch {p.get('torch')} ({p['cpu_capability']}, {p.get('threads')} threads), {p.get('device', 'cpu')}")
