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
import dataclasses
import logging
import statistics
import sys
from pathlib import Path

import torch

# benchmarks/ is on sys.path when run as a script
from _comparison import (accuracy_cell, load_rows, log_command, paired_cell, parse_options, pending_jobs, run_jobs,
                         table, target_key, write_csv)
from _provenance import describe
from compare_fair import METHODS
from mixbits.pipeline import SweepConfig
from mixbits.sweep import prepare_sweep, run_row

GRANULARITIES = ("layer", "group:32", "group:8", "channel")
CSV_FIELDS = ("model", "method", "granularity", "target", "seed", "units", "weight_compression", "test_accuracy",
              "derived_accuracy", "float_accuracy", "weight_epochs", "average_bits", "size_bits", "budget_bits",
              "solve_seconds", "search_seconds", "finetune_seconds", "distill", "device", "commit", "dirty")


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
    path = out / f"rows-{args.model}-{index}of{count}.jsonl"
    jobs = pending_jobs(path, jobs[index::count],
                        key=lambda r: (r["method"], r["granularity"], r["target"], r["seed"]))
    if not jobs:
        print(f"{path}: every job done")
        return
    base = prepare_sweep(config)
    setups = {g: dataclasses.replace(base, config=dataclasses.replace(config, granularity=g)) for g in grans}
    search_options = parse_options(args.search_option)

    def run_one(job: tuple) -> dict:
        label, gran, target, seed = job
        name, opts = METHODS[label]
        row = run_row(setups[gran], name, target, seed, options={**search_options, **opts} if name == "search" else opts)
        row.update(method=label, granularity=gran, search_epochs=args.search_epochs, device=str(base.device),
                   float_accuracy=base.float_accuracy, solve_seconds=_solve_seconds(row),
                   units=(row.get("info") or {}).get("units"))
        return row

    run_jobs(jobs, run_one, rows_path=path, errors_path=out / f"errors-{args.model}-{index}of{count}.txt",
             describe_row=lambda job, row: (f"{job[0]:>8} {job[1]:>9} {job[2]:>4} seed {job[3]}: "
                                            f"{row['weight_compression']:.2f}x  derived {100 * row['derived_accuracy']:.2f}%  "
                                            f"final {100 * row['test_accuracy']:.2f}%  units {row['units']}  "
                                            f"solve {row['solve_seconds'] or 0:.2f} s"))


def _gran_key(g: str) -> tuple[int, int]:
    """layer first, then groups from coarse to fine, then channel, then head."""
    if g == "layer":
        return (0, 0)
    if g.startswith("group:"):
        return (1, -int(g.split(":")[1]))
    return (2, 0) if g == "channel" else (3, 0)


def report(out: Path, header: list[str], rows_dirs: list[Path] | None = None) -> str:
    rows = load_rows(rows_dirs or [out])
    write_csv(out / "compare_granularity.csv", rows, CSV_FIELDS,
              order=lambda r: (r["model"], r["method"], _gran_key(r["granularity"]), target_key(r["target"]), r["seed"]))
    lines = list(header)
    for model in sorted({r["model"] for r in rows}):
        mr = [r for r in rows if r["model"] == model]
        targets = sorted({r["target"] for r in mr}, key=target_key)
        first = mr[0]
        lines += [f"## {model}", "",
                  f"Float test accuracy {100 * first['float_accuracy']:.2f}%; {first['weight_epochs']:g} weight epochs "
                  f"for every row; distillation {'on' if first['distill'] else 'off'}; device {first['device']}; "
                  f"seeds {sorted({r['seed'] for r in mr})}.", ""]
        for method in [m for m in METHODS if any(r["method"] == m for r in mr)]:
            rr_m = [r for r in mr if r["method"] == method]
            grans = sorted({r["granularity"] for r in rr_m}, key=_gran_key)
            pick = lambda g, t: [r for r in rr_m if r["granularity"] == g and r["target"] == t]  # noqa: E731
            units = {g: next((r["units"] for r in rr_m if r["granularity"] == g and r.get("units")), "-") for g in grans}
            lines += [f"### {method}", "", "Final test accuracy (%), mean ± std over seeds (weight compression "
                      "reached, seeds):", ""]
            lines += table("granularity | units", targets,
                           [(f"{g} | {units[g]}", [accuracy_cell(pick(g, t)) for t in targets]) for g in grans])
            lines += ["", "Test accuracy at the derived bits before any fine-tuning (BatchNorm statistics "
                      "re-estimated), mean over seeds:", ""]
            derived = lambda rr: f"{statistics.fmean(100 * r['derived_accuracy'] for r in rr):.2f}" if rr else "-"  # noqa: E731
            lines += table("granularity", targets, [(g, [derived(pick(g, t)) for t in targets]) for g in grans])
            lines += ["", "Per-seed difference against `layer` (points, mean ± std over paired seeds), and the "
                      "median time of the exact budget solve:", ""]

            def solve(g: str) -> str:
                times = [r["solve_seconds"] for r in rr_m if r["granularity"] == g and r.get("solve_seconds") is not None]
                return f"{statistics.median(times):.3f} s" if times else "-"

            lines += table("granularity", targets + ["solve time"],
                           [(g, [("0" if g == "layer" else paired_cell(pick(g, t), pick("layer", t))) for t in targets]
                             + [solve(g)]) for g in grans])
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
        header = ["# Bits per layer or per structure, at equal compute", "", f"Generated by {describe()}.", ""] + args.note
        print(report(Path(args.out), header + [""], args.rows))
        return 0
    torch.set_num_threads(args.threads)
    log_command(Path(args.out))
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
