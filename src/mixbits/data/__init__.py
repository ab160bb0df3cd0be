"""Data sets as tensors kept on the training device, and batch loaders over them.

``load_dataset(name)`` returns a :class:`TensorDataset`: uint8 or float images
with integer labels for a train and a test split. ``split_held_out`` makes the
fixed, seeded split of the training set into the part that trains weights and
the held-out part that trains the search's logits; the test split is never used
for search or selection. :class:`TensorLoader` iterates batches of a tensor data
set on its device, with whole-batch augmentation and no per-sample Python.

Modules: ``datasets`` (registry, digits, mnist5k, name resolution), ``cifar``
(CIFAR-10 from a folder/zip or torchvision), ``imagefolder`` (split/class/image
folders and zips), ``user`` (``package.module:function``), ``cache`` (decoded
tensors on disk), ``loader`` (device-resident batches).
"""

from .datasets import (DATASETS, TensorDataset, channel_stats, load_dataset, register_dataset, split_held_out,
                       take_train_subset)
from .loader import TensorLoader
from . import cifar  # noqa: F401  (registers cifar10)

__all__ = ["DATASETS", "TensorDataset", "TensorLoader", "channel_stats", "load_dataset", "register_dataset",
           "split_held_out", "take_train_subset"]
