"""A user's own data set: ``package.module:function`` returning (train, test).

The function is called with ``root=`` (the ``--data-root`` setting) when it takes
that argument. Each of train and test may be:

- a :class:`torch.utils.data.Dataset` of ``(image, label)`` pairs: images as tensors
  (C, H, W) or (H, W), numpy arrays, or PIL images (H, W[, C]);
- a pair ``(images, labels)`` of tensors or arrays, images (N, C, H, W) or (N, H, W).

The function may also return a :class:`~mixbits.data.TensorDataset` itself, to set
the normalisation and the augmentation. Otherwise uint8 images stay uint8, other
images become float32; normalisation uses the per-channel statistics of the
training images, the class count is the largest label + 1, and there is no augmentation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .._imports import call_with_accepted, import_callable
from .base import TensorDataset, channel_stats

__all__ = ["load_user_dataset", "to_tensors"]


def _image_tensor(img: Any) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        return img
    if isinstance(img, np.ndarray):
        return torch.from_numpy(img)
    if hasattr(img, "getbands"):  # a PIL image: (H, W[, C]) -> (C, H, W)
        arr = torch.from_numpy(np.array(img))
        return arr.permute(2, 0, 1) if arr.dim() == 3 else arr
    raise ValueError(f"cannot turn a {type(img).__name__} into an image tensor; return tensors, arrays or PIL images")


def to_tensors(data: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (N, C, H, W), labels (N,) int64) from a Dataset or an (images, labels) pair.

    Raises:
        ValueError: empty data, or items that are not (image, label) pairs of one shape.
    """
    if isinstance(data, torch.utils.data.TensorDataset):
        data = tuple(data.tensors[:2])
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], tuple):
        x, y = _image_tensor(data[0]), torch.as_tensor(np.asarray(data[1]) if not isinstance(data[1], torch.Tensor)
                                                       else data[1])
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (N, H, W) -> (N, 1, H, W)
    elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        n = len(data)
        if n == 0:
            raise ValueError(f"the {what} split is empty")
        xs, ys = [], []
        for i in range(n):
            item = data[i]
            if not (isinstance(item, (tuple, list)) and len(item) >= 2):
                raise ValueError(f"item {i} of the {what} split is a {type(item).__name__}, expected (image, label)")
            xi = _image_tensor(item[0])
            xs.append(xi.unsqueeze(0) if xi.dim() == 2 else xi)  # (H, W) -> (1, H, W)
            ys.append(int(item[1]))
        shapes = {tuple(t.shape) for t in xs}
        if len(shapes) != 1:
            raise ValueError(f"the {what} split has images of several shapes {sorted(shapes)[:3]}; resize them to one")
        x, y = torch.stack(xs), torch.tensor(ys)
    else:
        raise ValueError(f"the {what} split is a {type(data).__name__}; expected a Dataset of (image, label) "
                         f"or a pair (images, labels)")
    if x.dim() != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"the {what} split must be images (N, C, H, W) and N labels, got images "
                         f"{tuple(x.shape)} and {len(y)} labels")
    if x.dtype != torch.uint8:
        x = x.float()
    return x.contiguous(), y.to(torch.int64).flatten()


def load_user_dataset(spec: str, *, root: str | None = None) -> TensorDataset:
    """Call the user's ``package.module:function`` and turn its (train, test) into a TensorDataset.

    Raises:
        ValueError: the function cannot be imported or returns something else than (train, test).
    """
    fn = import_callable(spec, "data set")
    out = call_with_accepted(fn, root=root)
    if isinstance(out, TensorDataset):
        return out
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ValueError(f"{spec!r} returned a {type(out).__name__}; it must return (train, test)")
    train_x, train_y = to_tensors(out[0], "training")
    test_x, test_y = to_tensors(out[1], "test")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"{spec!r}: training images {tuple(train_x.shape[1:])} and test images "
                         f"{tuple(test_x.shape[1:])} differ in shape")
    num_classes = int(max(train_y.max(), test_y.max())) + 1
    if int(min(train_y.min(), test_y.min())) < 0:
        raise ValueError(f"{spec!r}: labels must be class indices 0..K-1")
    mean, std = channel_stats(train_x)
    return TensorDataset(spec, train_x, train_y, test_x, test_y, num_classes, mean, std)
