"""Every allocation method at equal compute, from one float checkpoint: the fair comparison.

The protocol (``mixbits.sweep.run_row`` with ``compute_matched``):

- one float checkpoint per model, the same for every method, seed and target;
- every row gets the same weight-update epochs after it, ``search_epochs + finetune_epochs``:
  the search spends ``search_epochs`` of them while it learns the bits, the other methods get
  them as extra fine-tuning;
- the same distillation setting for every row (``--distill`` / ``--no-distill``);
- BatchNorm statistics re-estimated on training batches once the bits are fixed and again after
  fine-tuning, before every evaluation;
- the full test split, several seeds, and per-seed differences against ``hessian``.

Methods (labels): ``uniform`` (the most bits every layer can have), ``hessian`` (HAWQ-style
sensitivity), ``random`` (an exact uniform draw of the assignments in the budget), ``search``
(the differentiable search as ``mixbits search`` runs it), ``search_uniform`` (the search from
all-zero logits: the relaxation alone), ``search_frozen`` (the search's weight training with
the logits frozen at the Hessian start: what the weights alone bring), ``search_logits``
(only the logits learn, on the float weights: the search spends no weight epochs and the
fine-tuning gets them all), ``search_nofill`` (the search's own choice, without spending the
budget it leaves unused on upgrades), and any label given
bits from a file with ``--fixed LABEL:TARGET=PATH`` (Sony MCT's post-training allocation from
``benchmarks/mct_baseline.py``, which runs in its own venv): those bits are fine-tuned and
evaluated like every other row.

Rows are appended to ``OUT/rows-<model>-<shard>.jsonl`` as they finish; ``--shard i/n`` runs
every n-th job so that several processes can share one GPU; ``--report`` merges every row file
in OUT into ``compare_fair.csv`` and ``compare_fair.md``.

    python benchmarks/compare_fair.py --model lenet5 --data mnist5k --checkpoint CKPT --out DIR
    python benchmarks/compare_fair.py --report --out DIR
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
from pathlib import Path

import torch

from _comparison import (accuracy_cell, load_rows, log_command, paired_cell, parse_options, pending_jobs, run_jobs,
                         table, target_key, write_csv)  # benchmarks/ is on sys.path when run as a script
from _provenance import describe
from mixbits.methods import Allocation
from mixbits.pipeline import SweepConfig
from mixbits.sweep import prepare_sweep, run_row

METHODS = {
    "uniform": ("uniform", {}),
    "hessian": ("hessian", {}),
    "random": ("random", {}),
    "search": ("search", {}),
    "search_uniform": ("search", {"init": "uniform"}),
    "search_frozen": ("search", {"train_logits": False}),
    "search_logits": ("search", {"train_weights": False, "warmup_epochs": 0}),
    "search_nofill": ("search", {"fill": False}),
}
CSV_FIELDS = ("model", "method", "target", "seed", "weight_compression", "test_accuracy", "weight_epochs",
              "float_accuracy", "derived_accuracy", "model_compression", "average_bits", "size_bits", "budget_bits",
              "finetune_epochs", "distill", "search_epochs", "changed_fraction", "mean_tv", "search_seconds",
              "finetune_seconds", "device", "commit", "dirty")


def _fixed_bits(specs: list[str]) -> dict[tuple[str, str], dict[str, int]]:
    """``--fixed LABEL:TARGET=PATH`` -> {(label, target): bits}."""
    fixed = {}
    for spec in specs:
        head, sep, path = spec.partition("=")
        label, sep2, target = head.partition(":")
        if not (sep and sep2):
            raise SystemExit(f"--fixed {spec!r}: write LABEL:TARGET=PATH")
        obj = json.loads(Path(path).read_text())
        fixed[(label, target)] = {k: int(v) for k, v in obj.get("bits", obj).items()}
    return fixed


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    fixed = _fixed_bits(args.fixed)
    for m in methods:
        if m not in METHODS and not any(label == m for label, _ in fixed):
            raise SystemExit(f"unknown method {m!r}; known: {', '.join(METHODS)}, or a --fixed label")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    config = SweepConfig(model=args.model, data=args.data, data_root=args.data_root, checkpoint=args.checkpoint,
                         methods=("hessian",), targets=tuple(targets), seeds=tuple(seeds),
                         search_epochs=args.search_epochs, finetune_epochs=args.finetune_epochs,
                         batch_size=args.batch_size, finetune_lr=args.finetune_lr, distill=args.distill,
                         train_subset=args.train_subset, test_subset=args.test_subset, device=args.device,
                         compute_matched=True, plot=False, binary_point=False, out=str(out))
    jobs = [(m, t, s) for s in seeds for t in targets for m in methods if m in METHODS or (m, t) in fixed]
    index, count = args.shard
    path = out / f"rows-{args.model}-{index}of{count}.jsonl"
    jobs = pending_jobs(path, jobs[index::count], key=lambda r: (r["method"], r["target"], r["seed"]))
    if not jobs:
        print(f"{path}: every job done")
        return
    setup = prepare_sweep(config)
    search_options = parse_options(args.search_option)

    def run_one(job: tuple) -> dict:
        label, target, seed = job
        if (label, target) in fixed:
            given = fixed[(label, target)]
            row = run_row(setup, label, target, seed, allocator=lambda ctx, b=given: Allocation(bits=dict(b)))
        else:
            name, opts = METHODS[label]
            row = run_row(setup, name, target, seed, options={**search_options, **opts} if name == "search" else opts)
        info = row.get("info") or {}
        row.update(method=label, search_epochs=args.search_epochs, device=str(setup.device),
                   float_accuracy=setup.float_accuracy, changed_fraction=info.get("changed_fraction"),
                   mean_tv=info.get("mean_tv"))
        return row

    run_jobs(jobs, run_one, rows_path=path, errors_path=out / f"errors-{args.model}-{index}of{count}.txt",
             describe_row=lambda job, row: (f"{job[0]:>15} {job[1]:>4} seed {job[2]}: {row['weight_compression']:.2f}x  "
                                            f"derived {100 * row['derived_accuracy']:.2f}%  "
                                            f"final {100 * row['test_accuracy']:.2f}%"))


def report(out: Path, header: list[str], rows_dirs: list[Path] | None = None) -> str:
    rows = load_rows(rows_dirs or [out])
    write_csv(out / "compare_fair.csv", rows, CSV_FIELDS,
              order=lambda r: (r["model"], not r["distill"], r["method"], target_key(r["target"]), r["seed"]))
    lines = list(header)
    for model, distill in sorted({(r["model"], bool(r["distill"])) for r in rows}, key=lambda k: (k[0], not k[1])):
        mr = [r for r in rows if r["model"] == model and bool(r["distill"]) == distill]
        targets = sorted({r["target"] for r in mr}, key=target_key)
        methods = [m for m in METHODS if any(r["method"] == m for r in mr)]
        methods += sorted({r["method"] for r in mr} - set(methods))
        pick = lambda m, t: [r for r in mr if r["method"] == m and r["target"] == t]  # noqa: E731
        first = mr[0]
        lines += [f"## {model}, distillation {'on' if distill else 'off'}", "",
                  f"Float test accuracy {100 * first['float_accuracy']:.2f}%; {first['weight_epochs']:g} weight epochs "
                  f"for every row ({first['search_epochs']} search + the rest fine-tuning for the search; all "
                  f"fine-tuning for the others); distillation {'on' if first['distill'] else 'off'}; device "
                  f"{first['device']}; seeds {sorted({r['seed'] for r in mr})}; commits "
                  f"{', '.join(sorted({str(r.get('commit')) + (' (dirty)' if r.get('dirty') else '') for r in mr}))}.",
                  "", "Final test accuracy (%), mean ± std over seeds, and the mean weight compression reached:", ""]
        lines += table("method", targets, [(m, [accuracy_cell(pick(m, t)) for t in targets]) for m in methods])
        lines += ["", "Per-seed difference against `hessian` (points, mean ± std over the paired seeds):", ""]
        lines += table("method", targets, [(m, [paired_cell(pick(m, t), pick("hessian", t)) for t in targets])
                                           for m in methods if m != "hessian"])
        moved = [m for m in methods if m.startswith("search")]
        if moved:
            lines += ["", "How far the search moved from its start (derived bits that differ from the bits of the "
                          "start logits; total-variation distance of the preference distributions), mean over seeds:", ""]

            def movement(rr: list[dict]) -> str:
                rr = [r for r in rr if r.get("changed_fraction") is not None]
                return (f"{100 * statistics.fmean(r['changed_fraction'] for r in rr):.0f}% layers, "
                        f"TV {statistics.fmean(r['mean_tv'] for r in rr):.2f}" if rr else "-")

            lines += table("method", targets, [(m, [movement(pick(m, t)) for t in targets]) for m in moved])
        lines.append("")
    text = "\n".join(lines)
    (out / "compare_fair.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="digits_cnn")
    p.add_argument("--data", default="digits")
    p.add_argument("--data-root")
    p.add_argument("--checkpoint", help="the float checkpoint every row starts from")
    p.add_argument("--methods", default="uniform,hessian,random,search,search_uniform,search_frozen")
    p.add_argument("--targets", default="8x,16x,24x,28x")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--search-epochs", type=int, default=4)
    p.add_argument("--finetune-epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--finetune-lr", type=float, default=0.01)
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--search-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a SearchConfig field for the search rows (repeatable)")
    p.add_argument("--fixed", action="append", default=[], metavar="LABEL:TARGET=PATH",
                   help="rows whose bits come from a JSON file ({layer: bits}, or {'bits': {...}}), e.g. "
                        "mct:8x=mct_resnet20_8x.json (repeatable)")
    p.add_argument("--train-subset", type=int, help="quick checks only: this many training samples")
    p.add_argument("--test-subset", type=int, help="quick checks only: this many test samples (default: all)")
    p.add_argument("--shard", default="0/1", help="i/n: run every n-th job starting at i")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    p.add_argument("--report", action="store_true", help="merge the row files in --out into compare_fair.csv/.md")
    p.add_argument("--note", action="append", default=[], help="a line for the report's header (repeatable)")
    p.add_argument("--rows", nargs="+", type=Path, help="with --report: folders whose rows-*.jsonl are merged "
                                                         "(default: --out)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    i, _, n = args.shard.partition("/")
    args.shard = (int(i), int(n))
    logging.basicConfig(level=logging.WARNING)
    if args.report:
        header = ["# Every method at equal compute", "", f"Merged by {describe()}.", *args.note, ""]
        print(report(Path(args.out), header, args.rows))
        return 0
    log_command(Path(args.out))
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
