"""``mixbits sweep``: several targets and methods from one float model; a table and a Pareto plot."""

from __future__ import annotations

import argparse

from .options import resolve_config
from .settings_args import add_settings_arguments

NAME = "sweep"
HELP = "run several methods at several targets from one float model; write a CSV/JSON table and a Pareto plot"


def _strings(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in str(text).split(",") if s.strip())


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in _strings(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .defaults import SWEEP as d

    add_settings_arguments(p, d, out_default="runs/<time>-sweep-<model>")
    p.add_argument("--methods", type=_strings, help=f"comma-separated methods, uniform:K for K bits everywhere "
                                                    f"(default {','.join(d.methods)})")
    p.add_argument("--targets", type=_strings, help=f"comma-separated targets (default {','.join(d.targets)})")
    p.add_argument("--seeds", type=_ints, help="comma-separated seeds; the first also seeds the float model (default 0)")
    p.add_argument("--no-binary-point", dest="binary_point", action="store_false", default=None,
                   help="do not add the all-binary model")
    p.add_argument("--no-plot", dest="plot", action="store_false", default=None, help="do not write pareto.png")
    p.add_argument("--no-keep-models", dest="keep_models", action="store_false", default=None,
                   help="do not keep each row's fine-tuned model (rows/<method>-<target>-seed<seed>/)")


def run(args: argparse.Namespace) -> int:
    from ..sweep import SweepConfig, sweep

    config = resolve_config(SweepConfig, args, skip=set())

    def show(row: dict) -> None:
        if row.get("same_as"):
            print(f"{row['method']:>12} {row['target']:>6} seed {row['seed']}: the same bits as {row['same_as']} "
                  f"(listed once)", flush=True)
            return
        print(f"{row['method']:>12} {row['target']:>6} seed {row['seed']}: {row['weight_compression']:6.2f}x weights, "
              f"{row['model_compression']:6.2f}x model  "
              f"{row['average_bits']:.3f} bits  test {100 * row['test_accuracy']:.2f}%  "
              f"(search {row['search_seconds']:.1f} s, fine-tune {row['finetune_seconds']:.1f} s)", flush=True)

    result = sweep(config, progress=not args.quiet, on_row=show, force=args.force)
    print(f"float test accuracy {100 * result['float_accuracy']:.2f}%")
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")
    return 0
