"""The defaults that ``--help`` quotes, kept here so that parsing arguments never imports torch.

They copy the defaults of :class:`mixbits.run.RunConfig` and :class:`mixbits.sweep.SweepConfig`
(both modules import torch); ``tests/test_cli.py`` fails when a copy drifts.
"""

from __future__ import annotations

from types import SimpleNamespace

__all__ = ["SEARCH", "SWEEP"]

SEARCH = SimpleNamespace(data="digits", model="digits_cnn", method="probe", target="24x", granularity="layer",
                         float_epochs=30,
                         search_epochs=10, finetune_epochs=10, batch_size=64, float_lr=0.05, finetune_lr=0.01,
                         held_out_fraction=0.2, seed=0, post_training_method="probe")
SWEEP = SimpleNamespace(data="digits", model="digits_cnn", granularity="layer",
                        methods=("search", "hessian", "random", "uniform"),
                        targets=("8x", "16x", "24x", "28x"), float_epochs=30, search_epochs=10, finetune_epochs=10,
                        batch_size=64, float_lr=0.05, finetune_lr=0.01, held_out_fraction=0.2)
