"""CIFAR-10: from an image folder or zip, or downloaded by torchvision into a folder."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import TensorDataset, register_dataset
from .imagefolder import looks_like_image_folder, read_image_folder

__all__ = ["cifar10", "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def _from_torchvision(root: Path) -> dict:
    try:
        from torchvision.datasets import CIFAR10
    except ImportError:
        if not root.exists():
            raise FileNotFoundError(
                f"data root {str(root)!r} does not exist: give the folder or zip that holds CIFAR-10 laid out "
                f"train/<class>/<image> and test/<class>/<image> (e.g. cifar10-jpeg.zip), or install torchvision "
                f"(pip install 'mixbits[vision]') to download it there") from None
        raise ImportError(
            f"{str(root)!r} does not hold train/<class>/<image> and test/<class>/<image>, and downloading "
            f"CIFAR-10 into it needs torchvision: pip install 'mixbits[vision]' (or give --data-root a folder "
            f"or zip laid out split/class/image)") from None
    out: dict = {}
    for split, train in (("train", True), ("test", False)):
        ds = CIFAR10(str(root), train=train, download=True)
        out[f"{split}_x"] = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32) uint8
        out[f"{split}_y"] = torch.tensor(ds.targets, dtype=torch.int64)
    return out


@register_dataset("cifar10")
def cifar10(root: str | None = None) -> TensorDataset:
    """CIFAR-10, 32x32 colour, 10 classes, trained with random crop (4-pixel padding) and flip.

    Args:
        root: a folder or zip laid out ``train/<class>/<image>`` and ``test/<class>/<image>``
            (such as ``cifar10-jpeg.zip``); or a folder (created if missing) into which torchvision
            downloads the data set.

    Raises:
        ValueError: no root given, or a folder with other classes than CIFAR-10's.
        ImportError: the root needs a download and torchvision is not installed.
    """
    if not root:
        raise ValueError("cifar10 needs --data-root: a folder or zip laid out train/<class>/<image> and "
                         "test/<class>/<image> (e.g. cifar10-jpeg.zip), or a folder to download into "
                         "(needs torchvision: pip install 'mixbits[vision]')")
    path = Path(root).expanduser()
    if path.suffix.lower() == ".zip" and not path.exists():
        raise FileNotFoundError(f"CIFAR-10 zip {root!r} does not exist")
    if path.is_file() or looks_like_image_folder(path):
        d = read_image_folder(path)
        if tuple(d["classes"]) != CIFAR10_CLASSES:
            raise ValueError(f"{root!r} has classes {d['classes']}, not CIFAR-10's {list(CIFAR10_CLASSES)}; "
                             f"use --data imagefolder:{root} for another image data set")
    else:
        d = _from_torchvision(path)
    return TensorDataset("cifar10", d["train_x"], d["train_y"], d["test_x"], d["test_y"], 10,
                         CIFAR10_MEAN, CIFAR10_STD, augment="crop_flip", class_names=CIFAR10_CLASSES)
