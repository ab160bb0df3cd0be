"""The default model at several targets: budget use, compression and accuracy, from one float checkpoint.

    python benchmarks/default_targets.py --out benchmarks/results/default_targets.md

Trains the default float model once (the default `mixbits search` recipe), then runs search ->
fine-tune -> evaluate from that checkpoint at each target and prints one row per target.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


from _provenance import describe  # benchmarks/ is on sys.path when run as a script

from mixbits.pipeline import RunConfig
from mixbits.run import run_search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--targets", default="8x,16x,24x,28x")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", help="write the Markdown table here")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in args.seeds.split(",")]:
            base = run_search(RunConfig(out=f"{tmp}/float-{seed}", seed=seed), progress=False)
            ckpt = f"{tmp}/float-{seed}/float.pt"
            for target in args.targets.split(","):
                r = base if target == "24x" else run_search(
                    RunConfig(target=target, checkpoint=ckpt, seed=seed, out=f"{tmp}/{target}-{seed}"), progress=False)
                t = r["totals"]
                rows.append((target, seed, r["budget_bits"], t["quantized_bits"], t["quantized_bits"] / r["budget_bits"],
                             t["weight_compression"], t["model_compression"], t["average_bits"],
                             r["float_test_accuracy"], r["final_test_accuracy"],
                             " ".join(f"{b}" for b in [row["bits"] for row in r["layers"]])))
                print(rows[-1])
    lines = [
        "# Default model (digits_cnn on scikit-learn digits) at several targets",
        "",
        f"Command: `python benchmarks/default_targets.py --targets {args.targets} --seeds {args.seeds}`  ",
        f"Run: {describe()}; "
        "default recipe (30 float epochs, 10 search, 10 fine-tune, distillation).",
        "",
        "| target | seed | budget (bits) | derived (bits) | budget used | weight compr. | model compr. | avg bits "
        "| float acc | final acc | bits per layer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t, s, b, q, u, wc, mc, ab, fa, acc, bits in rows:
        lines.append(f"| {t} | {s} | {b} | {q} | {100 * u:.1f}% | {wc:.2f}x | {mc:.2f}x | {ab:.3f} | {100 * fa:.2f}% "
                     f"| {100 * acc:.2f}% | {bits} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
