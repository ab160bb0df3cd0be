"""The data set registry and the built-in offline data sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..registry import Registry

__all__ = ["TensorDataset", "DATASETS", "register_dataset", "load_dataset", "split_held_out"]


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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])


DATASETS: Registry[Callable[..., TensorDataset]] = Registry("data set")
register_dataset = DATASETS.register


def load_dataset(name: str, *, root: str | None = None) -> TensorDataset:
    """Load a registered data set by name (an unknown name lists the known ones).

    Args:
        name: registry name.
        root: where the data set lives or is downloaded to (ignored by data sets that ship in a package).
    """
    return DATASETS.get(name)(root=root)


def split_held_out(num_train: int, held_out_fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed seeded split of the training indices into (weights part, held-out part).

    Raises:
        ValueError: a fraction outside (0, 1) or a split that leaves a part empty.
    """
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(num_train, generator=g)
    n_held = int(round(num_train * held_out_fraction))
    if n_held == 0 or n_held == num_train:
        raise ValueError(f"held-out fraction {held_out_fraction} of {num_train} samples leaves a part empty")
    return perm[n_held:].sort().values, perm[:n_held].sort().values


@register_dataset("digits")
def digits(root: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> TensorDataset:
    """scikit-learn's 1,797 handwritten digits, 8x8 grey, 10 classes (ships with scikit-learn)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a core dependency
        raise ImportError("the 'digits' data set needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    n_test = int(round(len(y) * test_fraction))
    test, train = perm[:n_test], perm[n_test:]
    return TensorDataset("digits", x[train], y[train], x[test], y[test], 10, (0.3,), (0.4,))
