"""The command-line options of the pipeline's shared settings (``mixbits search`` and ``mixbits sweep``)."""

from __future__ import annotations

import argparse

from .options import parse_bits, parse_granularity_text, parse_pin

__all__ = ["add_settings_arguments"]


def add_settings_arguments(p: argparse.ArgumentParser, d, *, out_default: str) -> None:
    """Add an option for every field of :class:`mixbits.pipeline.Settings`, with ``d``'s defaults in the help."""
    p.add_argument("-c", "--config", help="TOML file of settings (command-line options override it)")
    p.add_argument("--data", help=f"data set name (default {d.data})")
    p.add_argument("--data-root", help="where the data set lives (a folder or zip), or is downloaded to")
    p.add_argument("--model", help=f"model name (default {d.model})")
    p.add_argument("--bits", type=parse_bits, dest="candidates", help="candidate bitwidths, e.g. 1,2,4,8,16,32")
    p.add_argument("--pin", type=parse_pin, action="append", dest="pins", metavar="LAYER=BITS",
                   help="fix layers matching a glob pattern at BITS (repeatable)")
    p.add_argument("--exclude", action="append", metavar="PATTERN", help="keep layers matching PATTERN in float (repeatable)")
    p.add_argument("--param", action="append", dest="params", metavar="NAME",
                   help="also quantize this parameter (fully qualified name, two or more dimensions; repeatable)")
    p.add_argument("--loss", metavar="MODULE:FUNCTION",
                   help="task loss loss(outputs, labels) -> scalar for the allocation and the fine-tuning "
                        "(default cross-entropy)")
    p.add_argument("--granularity", type=parse_granularity_text, metavar="G",
                   help=f"one bitwidth per: layer, channel, group:N (N output channels) or head (attention heads) "
                        f"(default {d.granularity})")
    p.add_argument("--float-epochs", type=int, help=f"float training epochs when no checkpoint is given (default {d.float_epochs})")
    p.add_argument("--search-epochs", type=int, help=f"search epochs (default {d.search_epochs})")
    p.add_argument("--finetune-epochs", type=int, help=f"fine-tuning epochs (default {d.finetune_epochs})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    p.add_argument("--float-lr", type=float, help=f"peak learning rate of the float training (default {d.float_lr})")
    p.add_argument("--finetune-lr", type=float, help=f"peak learning rate of the fine-tuning (default {d.finetune_lr})")
    p.add_argument("--held-out-fraction", type=float,
                   help=f"training data held out: it ranks allocations (and trains search's logits) and the float "
                        f"training leaves it out; a fixed split, the same for every seed (default {d.held_out_fraction})")
    p.add_argument("--no-distill", dest="distill", action="store_false", default=None,
                   help="do not distil from the float model during search and fine-tuning")
    p.add_argument("--finetune-from", choices=("method", "float"),
                   help="fine-tune the weights the method hands over (default) or restart from the float weights")
    p.add_argument("--no-compute-matched", dest="compute_matched", action="store_false", default=None,
                   help="fine-tune finetune_epochs only (default: every method gets search_epochs + "
                        "finetune_epochs of weight updates in all)")
    p.add_argument("--train-subset", type=int, metavar="N",
                   help="use a fixed seeded subset of N training samples (quick CPU recipes; default all)")
    p.add_argument("--test-subset", type=int, metavar="N", help="use a fixed subset of N test samples (quick runs)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--out", help=f"output folder (default {out_default})")
    p.add_argument("--force", action="store_true", help="overwrite the results already in --out (their files are removed)")
    p.add_argument("--checkpoint", help="float checkpoint to start from instead of training the float model")
    p.add_argument("--post-training", action="store_true", default=None,
                   help="no weight update at all: allocate on the frozen float weights, re-estimate the BatchNorm "
                        "statistics, evaluate and export (no fine-tuning; --finetune-epochs is then an error)")
    p.add_argument("--calibration", type=int, metavar="N",
                   help="the most training images the allocation and the BatchNorm re-estimation read (default all)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
