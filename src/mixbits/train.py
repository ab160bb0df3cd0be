"""Training and evaluation loops shared by float training and fine-tuning.

The model knows nothing of training; these functions take any model and any
iterable of (inputs, labels) batches: a torch DataLoader or a
:class:`mixbits.data.TensorLoader`.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TrainConfig", "NonFiniteLossError", "fit", "evaluate", "cosine_lr"]

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the model was restored to its last good state."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """SGD training recipe.

    Attributes:
        epochs: passes over the training data.
        lr: peak learning rate.
        momentum, nesterov, weight_decay: SGD settings.
        warmup_epochs: linear warm-up before the cosine decay.
        label_smoothing: cross-entropy label smoothing.
        distill_weight: weight of the KL term to a teacher's logits (0 disables; needs a teacher).
        distill_temperature: softmax temperature of that KL term.
    """

    epochs: int = 10
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    distill_weight: float = 0.0
    distill_temperature: float = 4.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight}")


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    """Learning rate at ``step`` of ``total``: linear warm-up, then cosine decay to zero."""
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) on softened logits, scaled by T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                    reduction="batchmean", log_target=True) * t * t


def fit(model: nn.Module, loader: Iterable, config: TrainConfig, *, device: str | torch.device = "cpu",
        teacher: nn.Module | None = None, on_epoch: Callable[[int, dict], None] | None = None,
        progress: bool = False, desc: str = "train") -> list[dict]:
    """Train ``model`` in place with SGD + cosine schedule.

    Args:
        model: the model (float, or prepared with fixed bits for quantization-aware training).
        loader: iterable of (inputs, labels) batches; ``len(loader)`` batches per epoch.
        config: the recipe.
        device: where inputs are moved.
        teacher: float model whose logits are distilled when ``config.distill_weight > 0``.
        on_epoch: called after every epoch with (epoch, stats).
        progress: show a progress bar.

    Returns:
        per-epoch stats: loss, train accuracy, lr.

    Raises:
        NonFiniteLossError: NaN/inf loss; the model is restored to the start of the epoch.
    """
    if config.distill_weight > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs a teacher model")
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=config.lr, momentum=config.momentum, nesterov=config.nesterov)
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if teacher is not None:
        teacher.eval()
    history: list[dict] = []
    step = 0
    for epoch in range(config.epochs):
        good_state = copy.deepcopy(model.state_dict())
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = _bar(steps_per_epoch, f"{desc} {epoch + 1}/{config.epochs}", progress)
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            lr = cosine_lr(step, total, warmup, config.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            out = model(x)
            loss = F.cross_entropy(out, y, label_smoothing=config.label_smoothing)
            if config.distill_weight > 0:
                with torch.no_grad():
                    t_out = teacher(x)  # type: ignore[misc]
                loss = (1 - config.distill_weight) * loss + config.distill_weight * distill_loss(
                    out, t_out, config.distill_temperature)
            if not torch.isfinite(loss):
                model.load_state_dict(good_state)
                raise NonFiniteLossError(
                    f"{desc}: the loss became {loss.item()} at epoch {epoch + 1}, step {step}; the model was "
                    f"restored to the start of that epoch. Lower the learning rate (now {config.lr}) or check the data.")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            n = y.shape[0]
            loss_sum += loss.item() * n
            correct += int((out.argmax(1) == y).sum())
            seen += n
            if bar is not None:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}%")
                bar.update(1)
        if bar is not None:
            bar.close()
        stats = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_accuracy": correct / max(seen, 1), "lr": lr}
        history.append(stats)
        log.info("%s epoch %d/%d loss %.4f train acc %.4f", desc, epoch + 1, config.epochs, stats["loss"], stats["train_accuracy"])
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``loader``, a fraction in [0, 1]."""
    was_training = model.training
    model.eval()
    correct, seen = 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += int((model(x).argmax(1) == y).sum())
        seen += y.shape[0]
    model.train(was_training)
    if seen == 0:
        raise ValueError("evaluation data is empty")
    return correct / seen


def _bar(total: int, desc: str, on: bool):
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)
