"""What the comparison scripts (compare_fair.py, compare_granularity.py) share: the job loop that appends
rows as they finish and resumes where a killed run stopped, the command log, and the report's tables.

Every row gets :func:`_provenance.stamp` (the commit the process loaded, and whether its tree was dirty).
"""

from __future__ import annotations

import csv
import json
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from _provenance import describe, stamp  # benchmarks/ is on sys.path when run as a script

__all__ = ["mean_std", "parse_options", "log_command", "pending_jobs", "run_jobs", "load_rows", "write_csv",
           "table", "accuracy_cell", "paired_cell"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["weight_lr=0.005", "fill=false"]`` -> ``{"weight_lr": 0.005, "fill": False}`` (JSON values, else strings)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"option {pair!r}: write KEY=VALUE")
        out[key] = json.loads(value) if value[:1] in "-0123456789[{tf" else value
    return out


def log_command(out: Path) -> None:
    """Append the command, commit (dirty or not), time and machine to ``out/commands.txt``."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "commands.txt", "a") as f:
        f.write(describe() + "\n")


def pending_jobs(path: Path, jobs: list[tuple], key: Callable[[dict], tuple]) -> list[tuple]:
    """The jobs whose row is not in ``path`` yet (a rerun continues where a killed one stopped)."""
    done = {key(json.loads(line)) for line in path.read_text().splitlines() if line} if path.is_file() else set()
    return [j for j in jobs if j not in done]


def run_jobs(jobs: Iterable[tuple], run_one: Callable[[tuple], dict], *, rows_path: Path, errors_path: Path,
             describe_row: Callable[[tuple, dict], str]) -> None:
    """Run every job; append each finished row (stamped) to ``rows_path``; record a failed one and go on."""
    for job in jobs:
        t0 = time.time()
        label = " ".join(str(j) for j in job)
        try:
            row = run_one(job)
        except Exception as exc:  # noqa: BLE001 - one failed row must not stop the others; it is recorded
            with open(errors_path, "a") as f:
                f.write(f"{label}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}\n")
            print(f"{label}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        row.update(stamp())
        with open(rows_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{describe_row(job, row)}  ({time.time() - t0:.0f} s)", flush=True)


def load_rows(dirs: list[Path]) -> list[dict]:
    """Every row of every ``rows-*.jsonl`` in ``dirs``."""
    files = [p for d in dirs for p in sorted(Path(d).glob("rows-*.jsonl"))]
    rows = [json.loads(line) for p in files for line in p.read_text().splitlines() if line]
    if not rows:
        raise SystemExit(f"no rows-*.jsonl in {', '.join(str(d) for d in dirs)}")
    return rows


def write_csv(path: Path, rows: list[dict], fields: Sequence[str], order: Callable[[dict], Any]) -> None:
    """The rows as CSV, floats to 6 significant digits, in ``order``; every row names its commit and dirty flag."""
    fields = list(fields) + [f for f in ("commit", "dirty") if f not in fields]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=order):
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k)) for k in fields})


def target_key(target: str) -> float:
    return float(target.rstrip("x"))


def table(first: str, columns: list[str], body: list[tuple[str, list[str]]]) -> list[str]:
    """A Markdown table: a header of ``first`` and ``columns``, one line per (label, cells)."""
    lines = [f"| {first} | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in body]
    return lines


def accuracy_cell(rows: list[dict]) -> str:
    """``mean ± std (compression, n)`` of the final test accuracy (%) of ``rows``; ``-`` when empty."""
    if not rows:
        return "-"
    mean, std = mean_std([100 * r["test_accuracy"] for r in rows])
    comp = statistics.fmean(r["weight_compression"] for r in rows)
    return f"{mean:.2f} ± {std:.2f} ({comp:.1f}x, n={len(rows)})"


def paired_cell(rows: list[dict], base: list[dict]) -> str:
    """Mean ± std of the per-seed accuracy difference (points) of ``rows`` against ``base``; ``-`` when unpaired."""
    by_seed = {r["seed"]: r["test_accuracy"] for r in base}
    diffs = [100 * (r["test_accuracy"] - by_seed[r["seed"]]) for r in rows if r["seed"] in by_seed]
    if not diffs:
        return "-"
    mean, std = mean_std(diffs)
    return f"{mean:+.2f} ± {std:.2f}"
