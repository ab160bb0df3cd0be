"""Batches from tensors kept on the device, with whole-batch augmentation."""

from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F

__all__ = ["TensorLoader", "crop_flip"]


def crop_flip(x: torch.Tensor, generator: torch.Generator | None = None, pad: int = 4) -> torch.Tensor:
    """Random crop after ``pad``-pixel zero padding and random horizontal flip, for a whole batch.

    Args:
        x: images, shape (B, C, H, W).

    Returns:
        augmented images, shape (B, C, H, W).
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H+2p, W+2p)
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev)[None, :])  # (B, H)
    cols = (dx[:, None] + torch.arange(w, device=dev)[None, :])  # (B, W)
    flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    # Two 1-D gathers (rows, then columns) cost half the CPU time of one 3-D advanced index.
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))  # (B, C, H, W+2p)
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))  # (B, C, H, W)


class TensorLoader:
    """Iterate (images, labels) batches of tensors, normalised, shuffled and augmented per batch.

    Args:
        x: images (N, C, H, W), uint8 0..255 or float in [0, 1]; moved to ``device`` once.
        y: labels (N,).
        batch_size: batch size.
        shuffle: reshuffle every epoch from a seeded generator.
        augment: ``"none"`` or ``"crop_flip"``.
        mean, std: per-channel normalisation after scaling to [0, 1].
        drop_last: drop the last incomplete batch.
        seed: seed of the shuffling and augmentation generator.
        device: where batches live.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, shuffle: bool = False,
                 augment: str = "none", mean: tuple[float, ...] = (0.0,), std: tuple[float, ...] = (1.0,),
                 drop_last: bool = False, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if augment not in ("none", "crop_flip"):
            raise ValueError(f"unknown augmentation {augment!r}; known: none, crop_flip")
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"images and labels must be non-empty and of equal length, got {len(x)} and {len(y)}")
        self.device = torch.device(device)
        self.x = x.to(self.device)
        self.y = y.to(self.device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.drop_last = drop_last and len(x) >= batch_size
        c = x.shape[1] if x.dim() > 1 else 1
        view = (1, c) + (1,) * max(0, x.dim() - 2)  # broadcast over (N, C, ...) of any rank
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).expand(c).reshape(view)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).expand(c).reshape(view)
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def _prepare(self, xb: torch.Tensor) -> torch.Tensor:
        if self.augment == "crop_flip":  # on the stored dtype: uint8 moves 4x fewer bytes than float
            xb = crop_flip(xb, self.generator)
        return self._normalise(xb)

    def _normalise(self, xb: torch.Tensor) -> torch.Tensor:
        xb = xb.float() / 255.0 if xb.dtype == torch.uint8 else xb.float()
        return (xb - self.mean) / self.std

    def sample(self, limit: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(images, labels): the first ``limit`` of these images in one fixed order drawn from ``seed`` (not from
        this loader's generator), each image at most once, normalised and never augmented. What a score is
        measured on: it depends neither on how far this loader has been read, nor on a random crop, nor on
        ``drop_last``; every prefix is a uniform sample of the images. The loader is left as it was.

        Raises:
            ValueError: ``limit`` < 1.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        order = torch.randperm(len(self.x), generator=torch.Generator().manual_seed(seed))[:limit].to(self.device)
        return self._normalise(self.x[order]), self.y[order]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.x)
        order = torch.randperm(n, generator=self.generator).to(self.device) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            idx = order[sl] if order is not None else None
            xb = self.x[idx] if idx is not None else self.x[sl]
            yb = self.y[idx] if idx is not None else self.y[sl]
            yield self._prepare(xb), yb
