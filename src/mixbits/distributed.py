"""Data parallelism with torch.distributed: one process per device, launched by torchrun.

The contract that keeps every rank in lock-step:

- every rank builds the same loaders with the same seed, so each yields the same
  *global* batch at each step; :func:`shard_batch` gives each rank its contiguous
  slice of it (the slices of all ranks together are the global batch);
- the loops scale each rank's loss by its share of the global batch and
  :func:`average_gradients_` averages the gradients of the weights (and, in logit
  steps, of the logits), so every rank applies the same update as one process on
  the global batch would;
- after each logit step the logits are broadcast from rank 0, so the budget
  projection, the multiplier, the temperature and the derived bits are computed
  from identical numbers on every rank, even when a reduction is not bitwise
  reproducible (NCCL);
- only rank 0 writes files and shows progress (:func:`is_main`).

Without an initialised process group every function is a no-op for one process.
"""

from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Iterable

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "is_distributed", "world_size", "rank", "is_main", "local_device", "shard_batch",
           "average_gradients_", "broadcast_", "broadcast_object", "all_reduce_sum", "destroy"]

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """True on rank 0 (and in a single process): the rank that writes files and logs progress."""
    return rank() == 0


def init_from_env(device: torch.device) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses NCCL for CUDA devices and gloo otherwise. Does nothing when ``WORLD_SIZE``
    is unset or 1, or when a group is already initialised.

    Returns:
        True when this process runs as one rank of several.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {}
        if device.type == "cuda":
            kwargs["device_id"] = local_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30), **kwargs)
        log.info("rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    return is_distributed()


def local_device(device: torch.device) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` for a bare ``cuda`` device under torchrun, else ``device``."""
    if device.type == "cuda" and device.index is None:
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return device


def shard_batch(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This rank's contiguous slice of a global batch, and the weight of its loss.

    Args:
        x: inputs of the global batch, shape (B, ...).
        y: labels, shape (B,).

    Returns:
        (x slice, y slice, scale): the slices have about B / world_size rows;
        ``scale = n_local * world_size / B``, so that averaging ``scale * mean loss``
        over the ranks gives the mean loss of the global batch, even when B is not
        divisible by the number of ranks.

    Raises:
        ValueError: a global batch smaller than the number of ranks.
    """
    n = world_size()
    if n == 1:
        return x, y, 1.0
    b = y.shape[0]
    if b < n:
        raise ValueError(f"a batch of {b} samples cannot be split over {n} ranks; use a batch size >= {n}")
    r = rank()
    lo, hi = (b * r) // n, (b * (r + 1)) // n
    return x[lo:hi], y[lo:hi], (hi - lo) * n / b


def _flat_all_reduce_(tensors: list[torch.Tensor], average: bool) -> None:
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])  # (sum numel,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if average:
        flat /= world_size()
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


@torch.no_grad()
def average_gradients_(params: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks, in place (a missing gradient counts as zero).

    All tensors of one dtype and device go in one flat all-reduce.
    """
    if not is_distributed():
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for key in sorted(groups, key=str):
        _flat_all_reduce_(groups[key], average=True)


@torch.no_grad()
def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` on every rank with rank ``src``'s values, in place."""
    if not is_distributed():
        return
    for t in tensors:
        dist.broadcast(t.data, src=src)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over the ranks (float64)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [float(v) for v in t.cpu()]


def destroy() -> None:
    """Leave the process group, if one is initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
