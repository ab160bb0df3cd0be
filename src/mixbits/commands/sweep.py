"""``mixbits sweep``: several targets and methods from one float model; a table and a Pareto plot."""

from __future__ import annotations

import argparse

from .options import parse_bits, resolve_config

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

    p.add_argument("-c", "--config", help="TOML file of settings (command-line options override it)")
    p.add_argument("--data", help=f"data set name (default {d.data})")
    p.add_argument("--data-root", help="where the data set lives (a folder or zip)")
    p.add_argument("--model", help=f"model name (default {d.model})")
    p.add_argument("--methods", type=_strings, help=f"comma-separated methods, uniform:K for K bits everywhere "
                                                    f"(default {','.join(d.methods)})")
    p.add_argument("--targets", type=_strings, help=f"comma-separated targets (default {','.join(d.targets)})")
    p.add_argument("--seeds", type=_ints, help="comma-separated seeds (default 0)")
    p.add_argument("--bits", type=parse_bits, dest="candidates", help="candidate bitwidths, e.g. 1,2,4,8,16,32")
    p.add_argument("--float-epochs", type=int, help=f"float epochs when no checkpoint is given (default {d.float_epochs})")
    p.add_argument("--search-epochs", type=int, help=f"search epochs (default {d.search_epochs})")
    p.add_argument("--finetune-epochs", type=int, help=f"fine-tuning epochs, the same for every row (default {d.finetune_epochs})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    p.add_argument("--train-subset", type=int, help="use only this many training samples (quick runs)")
    p.add_argument("--test-subset", type=int, help="use only this many test samples (quick runs)")
    p.add_argument("--finetune-from", choices=("method", "float"),
                   help="fine-tune the weights the method hands over (default) or restart every row from the float weights")
    p.add_argument("--no-distill", dest="distill", action="store_false", default=None,
                   help="do not distil from the float model")
    p.add_argument("--no-compute-matched", dest="compute_matched", action="store_false", default=None,
                   help="fine-tune every row finetune_epochs only (default: every method gets search_epochs + "
                        "finetune_epochs of weight updates in all)")
    p.add_argument("--no-binary-point", dest="binary_point", action="store_false", default=None,
                   help="do not add the all-binary model")
    p.add_argument("--no-plot", dest="plot", action="store_false", default=None, help="do not write pareto.png")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--out", help="output folder (default runs/<time>-sweep-<model>)")
    p.add_argument("--force", action="store_true", help="overwrite the sweep already in --out (its files are removed)")
    p.add_argument("--checkpoint", help="float checkpoint to start every row from")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from ..sweep import SweepConfig, sweep

    config = resolve_config(SweepConfig, args, skip=set())

    def show(row: dict) -> None:
        print(f"{row['method']:>12} {row['target']:>6} seed {row['seed']}: {row['weight_compression']:6.2f}x  "
              f"{row['average_bits']:.3f} bits  test {100 * row['test_accuracy']:.2f}%  "
              f"(search {row['search_seconds']:.1f} s, fine-tune {row['finetune_seconds']:.1f} s)", flush=True)

    result = sweep(config, progress=not args.quiet, on_row=show, force=args.force)
    print(f"float test accuracy {100 * result['float_accuracy']:.2f}%")
    for kind, path in result["files"].items():
        print(f"{kind}: {path}")
    return 0
