"""Fine-tuning at fixed bits: quantization-aware training with straight-through rounding."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .space import BitSpace
from .train import TrainConfig, fit

__all__ = ["finetune_"]


def finetune_(model: nn.Module, space: BitSpace, bits: Mapping[str, int], loader: Iterable, config: TrainConfig, *,
              device: str | torch.device = "cpu", teacher: nn.Module | None = None,
              on_epoch: Callable[[int, dict], None] | None = None, progress: bool = False,
              resume: Mapping[str, Any] | None = None, on_checkpoint: Callable[[dict], None] | None = None,
              loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> list[dict]:
    """Fix ``model`` at ``bits`` and train its weights in place (optionally distilled from ``teacher``).

    ``resume`` and ``on_checkpoint`` continue an interrupted fine-tuning exactly (see :func:`mixbits.fit`);
    ``loss_fn(outputs, targets)`` is the task loss (default cross-entropy on class labels). Frozen
    weights (``requires_grad=False``) stay frozen.

    Returns:
        per-epoch training stats.
    """
    space.fix_(bits)
    model.to(device)
    return fit(model, loader, config, device=device, teacher=teacher, on_epoch=on_epoch, progress=progress,
               desc="finetune", resume=resume, on_checkpoint=on_checkpoint, loss_fn=loss_fn)
