"""Bits per layer against bits per structure, on the fair protocol of ``compare_fair.py``.

Every row starts from the same float checkpoint, gets the same weight epochs (the search's
epochs count), the same distillation setting, BatchNorm statistics re-estimated once the bits
are fixed and after fine-tuning, and is evaluated on the full test split; only the granularity
(``layer``, ``group:32``, ``group:8``, ``channel``; ``head`` for attention models) and the method
change. Per-seed differences are taken against ``layer`` with the same method, target and seed.

Each row also records the number of decision units and the time of the exact budget solve
(``solve_seconds``: the HiGHS knapsack of ``hessian``; the derivation and the budget fill of
``search``).

Rows are appended to ``OUT/rows-<model>-<shard>.jsonl`` as they finish (a rerun continues
where a killed one stopped); ``--report`` merges them into ``compare_granularity.md``/``.csv``.

    python benchmarks/compare_granularity.py --model lenet5 --data mnist5k --checkpoint CKPT --out DIR
    python benchmarks/compare_granularity.py --report --out DIR --note "line for the header"
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import platform
import shlex
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

from compare_fair import METHODS, _git_head, _mean_std, _options  # benchmarks/ is on sys.path when run as a script
from mixbits.pipeline import SweepConfig
from mixbits.sweep import prepare_sweep, run_row

GRANULARITIES = ("layer", "group:32", "group:8", "channel")
CSV_FIELDS = ("model", "method", "granularity", "target", "seed", "units", "weight_compression", "test_accuracy",
              "derived_accuracy", "float_accuracy", "weight_epochs", "average_bits", "size_bits", "budget_bits",
              "solve_seconds", "search_seconds", "finetune_seconds", "distill", "device")


def _solve_seconds(row: dict) -> float | None:
    info = row.get("info") or {}
    return info.get("solve_seconds")


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    grans = [g.strip() for g in args.granularities.split(",") if g.strip()]
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    config = SweepConfig(model=args.model, data=args.data, data_root=args.data_root, checkpoint=args.checkpoint,
                         methods=("hessian",), targets=tuple(targets), seeds=tuple(seeds),
                         search_epochs=args.search_epochs, finetune_epochs=args.finetune_epochs,
                         batch_size=args.batch_size, finetune_lr=args.finetune_lr, distill=args.distill,
                         train_subset=args.train_subset, test_subset=args.test_subset, device=args.device,
                         compute_matched=True, plot=False, binary_point=False, out=str(out))
    for g in grans:  # a bad granularity fails now, not after the first rows
        dataclasses.replace(config, granularity=g)
    jobs = [(m, g, t, s) for s in seeds for t in targets for m in methods for g in grans]
    index, count = args.shard
    jobs = jobs[index::count]
    path = out / f"rows-{args.model}-{index}of{count}.jsonl"
    done = set()
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["granularity"], r["target"], r["seed"]))
    jobs = [j for j in jobs if j not in done]
    if not jobs:
        print(f"{path}: every job done")
        return
    commit = _git_head()  # the code this process runs, even if HEAD moves while it runs
    base = prepare_sweep(config)
    setups = {g: dataclasses.replace(base, config=dataclasses.replace(config, granularity=g)) for g in grans}
    search_options = _options(args.search_option)
    for label, gran, target, seed in jobs:
        t0 = time.time()
        try:
            name, opts = METHODS[label]
            if name == "search":
                opts = {**search_options, **opts}
            row = run_row(setups[gran], name, target, seed, options=opts)
        except Exception as exc:  # noqa: BLE001 - one failed row must not stop the others; it is recorded
            with open(out / f"errors-{args.model}-{index}of{count}.txt", "a") as f:
                f.write(f"{label} {gran} {target} seed {seed}: {type(exc).__name__}: {exc}\n"
                        f"{traceback.format_exc()}\n")
            print(f"{label:>8} {gran:>9} {target:>4} seed {seed}: FAILED {type(exc).__name__}: {exc}", flush=True)
            continue
        info = row.get("info") or {}
        row.update(method=label, granularity=gran, search_epochs=args.search_epochs, device=str(base.device),
                   float_accuracy=base.float_accuracy, commit=commit, solve_seconds=_solve_seconds(row),
                   units=info.get("units"))
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{label:>8} {gran:>9} {target:>4} seed {seed}: {row['weight_compression']:.2f}x  "
              f"derived {100 * row['derived_accuracy']:.2f}%  final {100 * row['test_accuracy']:.2f}%  "
              f"units {row['units']}  solve {row['solve_seconds'] or 0:.2f} s  ({time.time() - t0:.0f} s)", flush=True)


def _gran_key(g: str) -> tuple[int, int]:
    """layer first, then groups from coarse to fine, then channel, then head."""
    if g == "layer":
        return (0, 0)
    if g.startswith("group:"):
        return (1, -int(g.split(":")[1]))
    return (2, 0) if g == "channel" else (3, 0)


def report(out: Path, header: list[str], rows_dirs: list[Path] | None = None) -> str:
    files = [p for d in (rows_dirs or [out]) for p in sorted(Path(d).glob("rows-*.jsonl"))]
    rows = [json.loads(line) for p in files for line in p.read_text().splitlines() if line]
    if not rows:
        raise SystemExit(f"no rows-*.jsonl in {', '.join(str(d) for d in (rows_dirs or [out]))}")
    with open(out / "compare_granularity.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in sorted(rows, key=lambda r: (r["model"], r["method"], _gran_key(r["granularity"]),
                                             float(r["target"].rstrip("x")), r["seed"])):
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r.get(k), float) else r.get(k)) for k in CSV_FIELDS})
    lines = list(header)
    for model in sorted({r["model"] for r in rows}):
        mr = [r for r in rows if r["model"] == model]
        targets = sorted({r["target"] for r in mr}, key=lambda t: float(t.rstrip("x")))
        first = mr[0]
        lines += [f"## {model}", "",
                  f"Float test accuracy {100 * first['float_accuracy']:.2f}%; {first['weight_epochs']:g} weight epochs "
                  f"for every row; distillation {'on' if first['distill'] else 'off'}; device {first['device']}; "
                  f"seeds {sorted({r['seed'] for r in mr})}.", ""]
        for method in [m for m in METHODS if any(r["method"] == m for r in mr)]:
            rr_m = [r for r in mr if r["method"] == method]
            grans = sorted({r["granularity"] for r in rr_m}, key=_gran_key)
            lines += [f"### {method}", "", "Final test accuracy (%), mean ± std over seeds (weight compression "
                      "reached, seeds):", "", "| granularity | units | " + " | ".join(targets) + " |",
                      "|---|---:|" + "---|" * len(targets)]
            for g in grans:
                cells = []
                for t in targets:
                    rr = [r for r in rr_m if r["granularity"] == g and r["target"] == t]
                    if not rr:
                        cells.append("-")
                        continue
                    mean, std = _mean_std([100 * r["test_accuracy"] for r in rr])
                    comp = statistics.fmean(r["weight_compression"] for r in rr)
                    cells.append(f"{mean:.2f} ± {std:.2f} ({comp:.1f}x, n={len(rr)})")
                units = next((r["units"] for r in rr_m if r["granularity"] == g and r.get("units")), "-")
                lines.append(f"| {g} | {units} | " + " | ".join(cells) + " |")
            lines += ["", "Test accuracy at the derived bits before any fine-tuning (BatchNorm statistics "
                      "re-estimated), mean over seeds:", "", "| granularity | " + " | ".join(targets) + " |",
                      "|---|" + "---|" * len(targets)]
            for g in grans:
                cells = []
                for t in targets:
                    rr = [100 * r["derived_accuracy"] for r in rr_m if r["granularity"] == g and r["target"] == t]
                    cells.append(f"{statistics.fmean(rr):.2f}" if rr else "-")
                lines.append(f"| {g} | " + " | ".join(cells) + " |")
            lines += ["", "Per-seed difference against `layer` (points, mean ± std over paired seeds), and the "
                      "median time of the exact budget solve:", "",
                      "| granularity | " + " | ".join(targets) + " | solve time |",
                      "|---|" + "---|" * len(targets) + "---:|"]
            for g in grans:
                cells = []
                for t in targets:
                    base = {r["seed"]: r["test_accuracy"] for r in rr_m if r["granularity"] == "layer"
                            and r["target"] == t}
                    diffs = [100 * (r["test_accuracy"] - base[r["seed"]]) for r in rr_m
                             if r["granularity"] == g and r["target"] == t and r["seed"] in base]
                    if g == "layer" or not diffs:
                        cells.append("-" if g != "layer" else "0")
                        continue
                    mean, std = _mean_std(diffs)
                    cells.append(f"{mean:+.2f} ± {std:.2f}")
                solve = [r["solve_seconds"] for r in rr_m if r["granularity"] == g and r.get("solve_seconds") is not None]
                lines.append(f"| {g} | " + " | ".join(cells) + f" | {statistics.median(solve):.3f} s |" if solve
                             else f"| {g} | " + " | ".join(cells) + " | - |")
            lines.append("")
    text = "\n".join(lines)
    (out / "compare_granularity.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="lenet5")
    p.add_argument("--data", default="mnist5k")
    p.add_argument("--data-root")
    p.add_argument("--checkpoint", help="the float checkpoint every row starts from")
    p.add_argument("--methods", default="hessian,search")
    p.add_argument("--granularities", default=",".join(GRANULARITIES))
    p.add_argument("--targets", default="16x,24x,28x")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--search-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--search-option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the search rows (repeatable), e.g. weight_lr=0.005")
    p.add_argument("--train-subset", type=int, help="this many training samples (fixed, seeded)")
    p.add_argument("--test-subset", type=int, help="quick checks only: this many test samples (default: all)")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th job starting at i")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--report", action="store_true", help="merge the row files in --out into compare_granularity.*")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    p.add_argument("--rows", nargs="+", type=Path, help="with --report: folders whose rows-*.jsonl are merged")
    args = p.parse_args(argv)
    i, _, n = args.shard.partition("/")
    args.shard = (int(i), int(n))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        header = ["# Bits per layer or per structure, at equal compute", "",
                  f"Generated by `python {' '.join(shlex.quote(a) for a in sys.argv)}`.", ""] + args.note
        print(report(Path(args.out), header + [""], args.rows))
        return 0
    torch.set_num_threads(args.threads)
    cmd = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    with open(Path(args.out).joinpath("commands.txt") if Path(args.out).is_dir() else _mk(args.out), "a") as f:
        f.write(f"{cmd}\n  commit {_git_head()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"{platform.machine()}, torch {torch.__version__}, "
                f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}\n")
    run(args)
    return 0


def _mk(out: str) -> Path:
    Path(out).mkdir(parents=True, exist_ok=True)
    return Path(out) / "commands.txt"


if __name__ == "__main__":
    sys.exit(main())
