"""Stage 1, data: the data set on the device and the loaders every later stage reads.

One rule for every job: the training subset is drawn with seed 0 (the subset
``mixbits train --train-subset`` trained on), the test subset and the held-out
split with fixed seeds, so every method and every seed sees the same held-out
images (a fixed validation split); the shuffling and the augmentation follow the
seed of the run or of the sweep row. The loaders of a row are built fresh, so a
row's result depends on its settings, its seed and the float weights only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..data import TensorDataset, TensorLoader, load_dataset, split_held_out, take_train_subset

__all__ = ["Data", "build_data", "TEST_BATCH"]

TEST_BATCH = 512  # evaluation batch size (forwards only)
_TEST_SUBSET_SEED = 4321
HELD_OUT_SEED = 0  # the held-out split is the same for every run and row


@dataclass(frozen=True)
class Data:
    """A loaded data set and the device its batches live on."""

    dataset: TensorDataset
    device: torch.device

    @property
    def model_kwargs(self) -> dict[str, int]:
        """What a zoo model needs to fit the data: in_channels, num_classes, input_size."""
        ds = self.dataset
        return {"in_channels": ds.input_shape[0], "num_classes": ds.num_classes, "input_size": ds.input_shape[1]}

    def train_loader(self, batch_size: int, seed: int, indices: torch.Tensor | None = None) -> TensorLoader:
        """Shuffled, augmented training batches (the whole training split, or ``indices`` of it)."""
        ds = self.dataset
        x, y = (ds.train_x, ds.train_y) if indices is None else (ds.train_x[indices], ds.train_y[indices])
        return TensorLoader(x, y, batch_size=batch_size, shuffle=True, augment=ds.augment, mean=ds.mean, std=ds.std,
                            drop_last=True, seed=seed, device=self.device)

    def test_loader(self, batch_size: int = TEST_BATCH) -> TensorLoader:
        ds = self.dataset
        return TensorLoader(ds.test_x, ds.test_y, batch_size=batch_size, mean=ds.mean, std=ds.std, device=self.device)

    def held_out_split(self, held_out_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(the training indices kept for the weights, the held-out ones): one fixed split per fraction, the same
        for every run, method and seed.

        Raises:
            ValueError: a held-out fraction that leaves a part empty.
        """
        return split_held_out(len(self.dataset.train_y), held_out_fraction, HELD_OUT_SEED)

    def loaders(self, *, batch_size: int, held_out_fraction: float, seed: int) -> dict[str, TensorLoader]:
        """{"full", "weights", "held_out", "test"}: a fixed held-out split; the shuffling follows ``seed``.

        Raises:
            ValueError: a held-out fraction that leaves a part empty.
        """
        w_idx, h_idx = self.held_out_split(held_out_fraction)
        return {"full": self.train_loader(batch_size, seed),
                "weights": self.train_loader(batch_size, seed + 1, w_idx),
                "held_out": self.train_loader(batch_size, seed + 2, h_idx),
                "test": self.test_loader()}


def build_data(name: str, *, root: str | None = None, train_subset: int | None = None,
               test_subset: int | None = None, device: torch.device) -> Data:
    """Load the data set ``name`` and take the fixed subsets asked for.

    Raises:
        ValueError: an unknown data set, or a subset larger than its split.
    """
    ds = load_dataset(name, root=root)
    if train_subset is not None:
        ds = take_train_subset(ds, train_subset)
    if test_subset is not None and test_subset < len(ds.test_y):
        g = torch.Generator().manual_seed(_TEST_SUBSET_SEED)
        idx = torch.randperm(len(ds.test_y), generator=g)[:test_subset].sort().values
        ds = replace(ds, test_x=ds.test_x[idx], test_y=ds.test_y[idx])
    return Data(ds, device)
