"""Stage 4, fine-tuning and evaluation at the fixed bits, under the compute-matched rule.

Every method gets ``search_epochs + finetune_epochs`` weight epochs in all: the
fine-tuning makes up what the method did not spend (``Allocation.weight_epochs``).
The fine-tuning starts from the row's starting random streams (data order,
augmentation, torch's RNG), so equal bits and seed fine-tune alike whatever the
method read. The BatchNorm statistics are re-estimated after the fine-tuning,
before the final evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..finetune import finetune_
from ..train import TrainConfig, evaluate, recalibrate_bn_
from .allocation import Row, rewind_streams_
from .config import Settings, loss_function

__all__ = ["Finetuned", "finetune_epochs", "finetune_and_evaluate"]


@dataclass
class Finetuned:
    """The fine-tuning's outcome: epochs, final test accuracy, per-epoch history, time."""

    epochs: int
    method_weight_epochs: float
    test_accuracy: float
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def finetune_epochs(settings: Settings, method_weight_epochs: float) -> tuple[float, int]:
    """(the weight epochs the method counts for, the fine-tuning epochs) under the settings' rules.

    With ``finetune_from="float"`` the method's weight training is thrown away, so it counts for none.
    """
    method_epochs = float(method_weight_epochs) if settings.finetune_from == "method" else 0.0
    if settings.post_training:
        return method_epochs, 0
    if not settings.compute_matched:
        return method_epochs, settings.finetune_epochs
    return method_epochs, max(0, round(settings.search_epochs + settings.finetune_epochs - method_epochs))


def finetune_and_evaluate(row: Row, settings: Settings, bits: Mapping[str, int], method_weight_epochs: float, *,
                          progress: bool = False, resume: Mapping[str, Any] | None = None,
                          on_checkpoint: Callable[[dict], None] | None = None) -> Finetuned:
    """Fine-tune the row's model at ``bits`` in place (distilled from the teacher), then evaluate it.

    ``resume`` and ``on_checkpoint`` continue an interrupted fine-tuning exactly (see :func:`mixbits.fit`);
    without ``resume`` it starts from the row's starting streams (:func:`rewind_streams_`). When resuming,
    the caller has restored the streams saved with ``resume``.
    """
    method_epochs, epochs = finetune_epochs(settings, method_weight_epochs)
    t0 = time.time()
    if settings.post_training:  # no weight update: the derived model (BatchNorm re-estimated when it was fixed)
        row.space.fix_(bits)
        with torch.no_grad():
            accuracy = evaluate(row.model, row.loaders["test"], device=row.device)
        return Finetuned(0, method_epochs, accuracy, [], time.time() - t0)
    if resume is None:
        rewind_streams_(row)
    history = finetune_(row.model, row.space, bits, row.loaders["full"],
                        TrainConfig(epochs=epochs, lr=settings.finetune_lr,
                                    distill_weight=0.5 if settings.distill else 0.0),
                        device=row.device, teacher=row.teacher, progress=progress, resume=resume,
                        on_checkpoint=on_checkpoint, loss_fn=loss_function(settings))
    recalibrate_bn_(row.model, row.loaders["full"], device=row.device)
    seconds = time.time() - t0
    return Finetuned(epochs, method_epochs, evaluate(row.model, row.loaders["test"], device=row.device), history,
                     seconds)
