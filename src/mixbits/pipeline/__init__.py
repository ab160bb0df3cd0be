"""One pipeline behind ``mixbits search``, ``mixbits sweep``, ``mixbits train`` and the benchmarks.

The architecture in five lines:

1. ``config``: one :class:`Settings` type (RunConfig adds a method/target/seed, SweepConfig their lists).
2. ``data`` -> ``float_model``: the data set and loaders (one rule: a fixed held-out split, shuffling by the row's seed), then the float weights.
3. ``allocation``: a row = fresh model from the float weights + fresh loaders; a method's bits; bits fixed, BN re-estimated.
4. ``finetune``: compute-matched fine-tuning (search + fine-tune epochs in all), BN re-estimated, test accuracy.
5. ``export``; the jobs only order the stages: ``search_job`` (one row, checkpointed) and ``sweep_job`` (many rows).

A run with seed s and a one-row sweep with seeds (s,) and the same settings give the same bits
and accuracies: both train the float model on loaders seeded by s, and both start the row from a
fresh model and fresh loaders seeded by s.
"""

from .allocation import Row, allocate_bits, fix_bits_, prepare_config, start_row
from .config import RunConfig, Settings, SweepConfig, parse_method
from .data import Data, build_data
from .export import PACKED_FILE, export_row
from .finetune import Finetuned, finetune_and_evaluate, finetune_epochs
from .float_model import (FloatModel, check_targets, fit_float_, float_checkpoint, held_out_unseen, load_float_state,
                          new_model, resolve_device)

__all__ = ["Settings", "RunConfig", "SweepConfig", "parse_method", "Data", "build_data", "FloatModel", "resolve_device",
           "new_model", "check_targets", "fit_float_", "load_float_state", "held_out_unseen", "float_checkpoint",
           "Row", "start_row",
           "prepare_config", "allocate_bits", "fix_bits_", "Finetuned", "finetune_epochs", "finetune_and_evaluate",
           "export_row", "PACKED_FILE"]
