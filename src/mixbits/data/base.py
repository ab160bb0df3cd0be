"""What every data set is: a :class:`TensorDataset` (whole splits as tensors), the registry of
named data sets, and per-channel statistics. The modules that build data sets import this one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..registry import Registry

__all__ = ["TensorDataset", "DATASETS", "register_dataset", "channel_stats"]


@dataclass
class TensorDataset:
    """A whole data set as tensors.

    Attributes:
        name: registry name.
        train_x, test_x: images, shape (N, C, H, W), uint8 (0..255) or float.
        train_y, test_y: labels, shape (N,), int64.
        num_classes: number of classes.
        mean, std: per-channel normalisation applied to images scaled to [0, 1], shape (C,).
        augment: ``"none"`` or ``"crop_flip"`` (random crop with 4-pixel padding, horizontal flip).
        class_names: label ``i``'s name at index ``i``; empty when unknown (kept in exported files).
    """

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str = "none"
    class_names: tuple[str, ...] = ()

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


DATASETS: Registry[Callable[..., TensorDataset]] = Registry("data set")
register_dataset = DATASETS.register


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images scaled to [0, 1] (uint8 / 255, float as is).

    Args:
        x: images (N, C, H, W).

    Returns:
        (mean, std), each a tuple of C floats; a zero std is replaced by 1.
    """
    xf = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    flat = xf.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N*H*W)
    mean = flat.mean(1, dtype=torch.float64)
    std = flat.std(1)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
