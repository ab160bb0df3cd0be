"""Training and evaluation loops shared by float training and fine-tuning.

The model knows nothing of training; these functions take any model and any
iterable of (inputs, labels) batches: a torch DataLoader or a
:class:`mixbits.data.TensorLoader`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .progress import StageProgress

__all__ = ["TrainConfig", "NonFiniteLossError", "fit", "evaluate", "evaluate_loss", "correct_count", "cosine_lr",
           "recalibrate_bn_", "BN_BATCHES"]

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
        label_smoothing: cross-entropy label smoothing (the default loss only).
        distill_weight: weight of the KL term to a teacher's logits (0 disables; needs a teacher).
        distill_temperature: softmax temperature of that KL term.
        amp: on CUDA, bf16 autocast and channels-last memory (no effect on other devices).
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
    amp: bool = True

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
    """KL(teacher || student) on softened logits, scaled by T^2 (Hinton et al.).

    The classes are dim 1, as for cross-entropy: (N, C) logits, or (N, C, ...) per position
    (per-pixel, per-token); the KL is summed over the classes and averaged over every other position.
    """
    t = temperature
    if student.dim() > 2:  # (N, C, d1, ...) -> (N * d1 * ..., C)
        classes = student.shape[1]
        student = student.movedim(1, -1).reshape(-1, classes)
        teacher = teacher.movedim(1, -1).reshape(-1, classes)
    return F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1),
                    reduction="batchmean", log_target=True) * t * t


def check_teacher(distill_weight: float, teacher: nn.Module | None) -> None:
    """A distillation weight needs a teacher, and a teacher a distillation weight.

    Raises:
        ValueError: one without the other.
    """
    if distill_weight > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs a teacher model")
    if teacher is not None and distill_weight == 0:
        raise ValueError("a teacher was given but distill_weight is 0, so it would be ignored: set distill_weight "
                         "(e.g. 0.5) or drop teacher=")


def sgd(params: list[torch.Tensor], *, lr: float, momentum: float, nesterov: bool,
        weight_decay: float) -> torch.optim.SGD:
    """SGD with weight decay on weights (dim > 1) only, not on biases and norms."""
    return torch.optim.SGD([{"params": [p for p in params if p.dim() > 1], "weight_decay": weight_decay},
                            {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}],
                           lr=lr, momentum=momentum, nesterov=nesterov)


def fit(model: nn.Module, loader: Iterable, config: TrainConfig, *, device: str | torch.device = "cpu",
        teacher: nn.Module | None = None, on_epoch: Callable[[int, dict], None] | None = None,
        progress: bool = False, desc: str = "train", resume: Mapping[str, Any] | None = None,
        on_checkpoint: Callable[[dict], None] | None = None,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> list[dict]:
    """Train ``model`` in place with SGD + cosine schedule.

    Only parameters with ``requires_grad`` train: frozen weights stay as they are.

    Under torch.distributed (see :mod:`mixbits.distributed`) every rank must get the
    same loader; each rank trains on its slice of every batch and the gradients are
    averaged, so all ranks hold the same weights.

    Args:
        model: the model (float, or prepared with fixed bits for quantization-aware training).
        loader: iterable of (inputs, labels) batches; ``len(loader)`` batches per epoch. A loader
            with ``state_dict``/``load_state_dict`` (:class:`mixbits.data.TensorLoader`) is checkpointed.
        config: the recipe.
        device: where inputs are moved.
        teacher: float model whose logits are distilled when ``config.distill_weight > 0``.
        on_epoch: called after every epoch with (epoch, stats).
        progress: show a progress bar.
        desc: name of the stage in bars, logs and errors.
        resume: a state from ``on_checkpoint``: training continues after its epoch and ends
            exactly as the uninterrupted run would (same device, same loader).
        on_checkpoint: called at the end of every epoch with the full training state (model,
            optimizer, loader and RNG states, counters, history). Its tensors are the live ones:
            save or copy them before returning.
        loss_fn: ``loss_fn(outputs, targets)`` -> mean-reduced scalar (per-pixel, regression,
            language-model losses); default cross-entropy on integer class labels with
            ``config.label_smoothing``.

    Returns:
        per-epoch stats: loss, train accuracy (None when the targets are not class indices), lr.

    Raises:
        NonFiniteLossError: NaN/inf loss; the model is restored to the start of the epoch.
    """
    check_teacher(config.distill_weight, teacher)
    device = torch.device(device)
    channels_last_(model, device, config.amp)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = sgd(params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
              weight_decay=config.weight_decay)
    steps_per_epoch = len(loader)  # type: ignore[arg-type]
    total = config.epochs * steps_per_epoch
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if teacher is not None:
        teacher.eval()
    history: list[dict] = []
    step, first_epoch = 0, 0
    if resume is not None:
        first_epoch, step, history = _restore_fit(resume, model, opt, loader, config, steps_per_epoch, desc)
    else:
        distributed.broadcast_(model.state_dict().values())
    bar = StageProgress(desc, config.epochs, steps_per_epoch, enabled=progress and distributed.is_main(),
                        first_epoch=first_epoch)
    lr = cosine_lr(step, total, warmup, config.lr)
    for epoch in range(first_epoch, config.epochs):
        good_state = copy.deepcopy(model.state_dict())
        model.train()
        loss_sum, correct, seen, labeled = 0.0, 0, 0, 0
        bar.start_epoch(epoch, steps_per_epoch)
        for x, y in loader:
            x, y = to_device_batch(x, y, device, config.amp)
            x, y, scale = distributed.shard_batch(x, y)
            lr = cosine_lr(step, total, warmup, config.lr)
            for g in opt.param_groups:
                g["lr"] = lr
            with autocast(device, config.amp):
                out = model(x)
                loss = (loss_fn(out, y) if loss_fn is not None
                        else F.cross_entropy(out, y, label_smoothing=config.label_smoothing))
                if config.distill_weight > 0:
                    with torch.no_grad():
                        t_out = teacher(x)  # type: ignore[misc]
                    loss = (1 - config.distill_weight) * loss + config.distill_weight * distill_loss(
                        out, t_out, config.distill_temperature)
            loss_value = global_mean(loss, scale, device)
            if not math.isfinite(loss_value):
                model.load_state_dict(good_state)
                raise NonFiniteLossError(
                    f"{desc}: the loss became {loss_value} at epoch {epoch + 1}, step {step}; the model was "
                    f"restored to the start of that epoch. Lower the learning rate (now {config.lr}) or check the data.")
            opt.zero_grad(set_to_none=True)
            (loss * scale).backward()
            distributed.average_gradients_(params)
            opt.step()
            step += 1
            n = x.shape[0]
            loss_sum += loss_value * n
            right, counted = correct_count(out, y)
            correct += right
            labeled += counted
            seen += n
            bar.step(lambda: {"loss": f"{loss_sum / seen:.3f}", "lr": f"{lr:.3g}",
                              **({"acc": f"{100 * correct / labeled:.1f}%"} if labeled else {})})
        bar.end_epoch()
        loss_sum, correct, seen, labeled = distributed.all_reduce_sum([loss_sum, correct, seen, labeled], device)
        distributed.broadcast_(model.buffers())  # BatchNorm statistics as rank 0 saw them, on every rank
        stats = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                 "train_accuracy": correct / labeled if labeled else None, "lr": lr}
        history.append(stats)
        log.info("%s epoch %d/%d loss %.4f%s", desc, epoch + 1, config.epochs, stats["loss"],
                 f" train acc {stats['train_accuracy']:.4f}" if labeled else "")
        if on_checkpoint is not None:
            on_checkpoint({"kind": "fit", "epoch": epoch + 1, "step": step, "steps_per_epoch": steps_per_epoch,
                           "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "loader": loader_state(loader), "rng": rng_state(device), "history": list(history)})
        if on_epoch is not None:
            on_epoch(epoch, stats)
    return history


def _restore_fit(state: Mapping[str, Any], model: nn.Module, opt: torch.optim.Optimizer, loader: Iterable,
                 config: TrainConfig, steps_per_epoch: int, desc: str) -> tuple[int, int, list[dict]]:
    if state.get("kind") != "fit":
        raise ValueError(f"{desc}: the resume state is not a training state (kind {state.get('kind')!r})")
    if state["steps_per_epoch"] != steps_per_epoch or state["epoch"] > config.epochs:
        raise ValueError(f"{desc}: the resume state (epoch {state['epoch']}, {state['steps_per_epoch']} steps per "
                         f"epoch) does not match this run ({config.epochs} epochs of {steps_per_epoch} steps)")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    load_loader_state(loader, state.get("loader"))
    set_rng_state(state["rng"])
    log.info("%s: resumed after epoch %d", desc, state["epoch"])
    return int(state["epoch"]), int(state["step"]), list(state["history"])


def global_mean(loss: torch.Tensor, scale: float, device: torch.device) -> float:
    """The mean loss of the global batch (this rank's loss when not distributed)."""
    value = float(loss.detach()) * scale
    if distributed.is_distributed():
        value = distributed.all_reduce_sum([value], device)[0] / distributed.world_size()
    return value


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (tensor cores); a no-op on other devices."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def channels_last_(model: nn.Module, device: torch.device, enabled: bool) -> None:
    # Channels-last convolutions are faster with tensor cores; on CPU the default layout is kept.
    if enabled and device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def to_device_batch(x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if amp and device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states that a loop consumes (CPU, and the CUDA device when used)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def loader_state(loader: Any) -> dict | None:
    return loader.state_dict() if hasattr(loader, "state_dict") else None


def load_loader_state(loader: Any, state: Mapping | None) -> None:
    if state is not None and hasattr(loader, "load_state_dict"):
        loader.load_state_dict(state)


def correct_count(outputs: Any, targets: Any) -> tuple[int, int]:
    """(correct, counted) top-1 predictions when ``targets`` are class indices of ``outputs``, else (0, 0).

    Class indices: an integer tensor shaped like ``outputs`` without its class dimension (dim 1):
    (N,) labels for (N, C) logits, (N, H, W) pixel labels for (N, C, H, W) logits. Regression
    targets, token sequences scored by a custom loss and other targets count nothing.
    """
    if not (isinstance(outputs, torch.Tensor) and isinstance(targets, torch.Tensor)) or targets.is_floating_point() \
            or targets.is_complex() or targets.dtype == torch.bool or outputs.dim() != targets.dim() + 1 \
            or outputs.shape[:1] + outputs.shape[2:] != targets.shape:
        return 0, 0
    return int((outputs.argmax(1) == targets).sum()), targets.numel()


@torch.no_grad()
@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """``model`` in eval mode for the block, its training flag restored afterwards (also on an error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def evaluate(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu") -> float:
    """Top-1 accuracy of ``model`` on ``loader``, a fraction in [0, 1] (per pixel for per-pixel labels).

    Raises:
        ValueError: empty data, or targets that are not class indices of the outputs (use
            :func:`evaluate_loss` for such tasks).
    """
    correct, seen = 0, 0
    with _eval_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            out = model(x)
            right, counted = correct_count(out, y)
            if counted == 0 and y.numel() > 0:
                raise ValueError(f"accuracy needs integer class labels shaped like the outputs without dim 1; got "
                                 f"outputs {tuple(out.shape)} and targets {tuple(y.shape)} {y.dtype}: evaluate "
                                 f"this task with evaluate_loss(model, loader, loss_fn)")
            correct += right
            seen += counted
    if seen == 0:
        raise ValueError("evaluation data is empty")
    return correct / seen


@torch.no_grad()
def evaluate_loss(model: nn.Module, loader: Iterable, loss_fn: Callable[[Any, Any], torch.Tensor], *,
                  device: str | torch.device = "cpu") -> float:
    """Mean of ``loss_fn(model(x), y)`` over ``loader``, weighted by batch size (for any task).

    Raises:
        ValueError: the loader yields no batch.
    """
    total, seen = 0.0, 0
    with _eval_mode(model):
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            total += float(loss_fn(model(x), y)) * x.shape[0]
            seen += x.shape[0]
    if seen == 0:
        raise ValueError("evaluation data is empty")
    return total / seen


# Training batches averaged into the BatchNorm statistics after the bits are fixed.
BN_BATCHES = 50


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, loader: Iterable, *, device: str | torch.device = "cpu",
                    batches: int = BN_BATCHES) -> int:
    """Re-estimate every BatchNorm's running statistics for the weights the model computes with now.

    The running mean and variance a model carries were averaged while other weights
    computed (the float weights, or mixed weights during the search); once the bits
    are fixed they are stale. This resets them and averages the batch statistics
    (cumulative, not exponential) over the first ``batches`` batches of ``loader``,
    forwards only: no weight changes. Use training batches, never the test split.

    Returns:
        the number of batches used (0 when the model has no BatchNorm).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or batches < 1:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    used = 0
    for x, _ in loader:
        model(x.to(device))
        used += 1
        if used >= batches:
            break
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.train(was_training)
    if used == 0:
        raise ValueError("BatchNorm re-estimation got no batch: the training loader is empty")
    return used
