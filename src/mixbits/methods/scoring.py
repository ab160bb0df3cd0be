"""Held-out loss of a discrete assignment: the score black-box and selecting methods compare.

:class:`HeldOutScorer` gathers a fixed set of training-split images once (at most
``calibration`` of them, from the held-out split, never the test split; from mixbits' own
loaders the same unaugmented sample for every method, run and seed), and scores an
assignment by fixing the model at its bits, re-estimating the BatchNorm statistics on
the first of those images (when the model has BatchNorm), and averaging the
cross-entropy over all of them with no gradient. Each candidate's quantized weight is
cached per layer (:class:`mixbits.mixture.Decision`), so switching assignments costs
forwards only. Scores are memoised per assignment.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..bitspace import BitSpace
from ..cost import Bits
from ..data import TensorLoader
from ..train import recalibrate_bn_

__all__ = ["HeldOutScorer", "gather_images", "has_batchnorm", "select_candidate"]

_CHUNK = 256  # images per scoring forward


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers that track running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def gather_images(loader: Iterable, limit: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``limit`` (inputs, labels) of ``loader`` (all of them if it holds fewer), on ``device``.

    mixbits' own :class:`~mixbits.data.TensorLoader` gives a fixed sample (:meth:`TensorLoader.sample`: one
    order fixed by seed 0, not augmented, each image once), so the same images score every assignment in every
    method and every run, whatever was read from the loader before and whatever random crop it would draw;
    any other iterable gives its first ``limit`` pairs as it yields them (give one without augmentation).

    Raises:
        ValueError: the loader is empty.
    """
    if isinstance(loader, TensorLoader):
        x, y = loader.sample(limit)
        return x.to(device), y.to(device)
    xs, ys, n = [], [], 0
    for x, y in loader:
        take = min(limit - n, x.shape[0])
        xs.append(x[:take].to(device))
        ys.append(y[:take].to(device))
        n += take
        if n >= limit:
            break
    if n == 0:
        raise ValueError("no calibration images: the held-out split is empty")
    return torch.cat(xs), torch.cat(ys)


class HeldOutScorer:
    """Cross-entropy of the model at a given assignment on fixed training-split images.

    Args:
        model: the prepared model (float weights; they are never changed).
        space: its BitSpace.
        loader: batches to take the images from (the held-out split).
        images: how many images to score on.
        bn_images: how many of them re-estimate the BatchNorm statistics (models with BatchNorm).
        device: where model and images live.
        loss_fn: the task loss ``loss_fn(outputs, targets)`` -> mean-reduced scalar (the run's own, e.g. a
            regression loss); None: cross-entropy on integer labels.
    """

    def __init__(self, model: nn.Module, space: BitSpace, loader: Iterable, *, images: int = 1024,
                 bn_images: int = 512, device: torch.device | str = "cpu",
                 loss_fn: Callable[[Any, Any], torch.Tensor] | None = None) -> None:
        self.model, self.space, self.device, self.loss_fn = model, space, torch.device(device), loss_fn
        self.x, self.y = gather_images(loader, images, self.device)
        self.bn = has_batchnorm(model)
        self.bn_batches = [(self.x[i:i + _CHUNK], None) for i in range(0, min(bn_images, len(self.y)), _CHUNK)]
        self.cache: dict[tuple, float] = {}
        self.evaluations = 0

    def subset(self, images: int) -> "HeldOutScorer":
        """A scorer on the first ``images`` of these images, BatchNorm re-estimated on those same images (a
        cheaper, noisier score for screening many assignments); its own cache and evaluation count."""
        n = min(images, len(self.y))
        return HeldOutScorer(self.model, self.space, [(self.x[:n], self.y[:n])], images=n, bn_images=n,
                             device=self.device, loss_fn=self.loss_fn)

    def key(self, bits: Mapping[str, Bits]) -> tuple:
        return tuple(bits[n] for n in self.space.names)

    @torch.no_grad()
    def loss(self, bits: Mapping[str, Bits], images: int | None = None) -> float:
        """Mean cross-entropy at ``bits`` on the first ``images`` images (all by default); memoised."""
        n = len(self.y) if images is None else min(images, len(self.y))
        k = (self.key(bits), n)
        if k in self.cache:
            return self.cache[k]
        self.space.fix_(dict(bits))
        if self.bn:
            recalibrate_bn_(self.model, self.bn_batches, device=self.device, batches=len(self.bn_batches))
        was = self.model.training
        self.model.eval()
        total = 0.0
        for i in range(0, n, _CHUNK):
            out = self.model(self.x[i:min(i + _CHUNK, n)])
            y = self.y[i:min(i + _CHUNK, n)]
            if self.loss_fn is None:
                total += float(F.cross_entropy(out.float(), y, reduction="sum"))
            else:
                total += float(self.loss_fn(out, y)) * len(y)
        self.model.train(was)
        self.evaluations += 1
        self.cache[k] = total / n
        return self.cache[k]

    def info(self) -> dict[str, Any]:
        return {"scored_images": len(self.y), "evaluations": self.evaluations, "batchnorm": self.bn}


def select_candidate(scorer: HeldOutScorer, candidates: list, select: bool = True) -> tuple[list[float], int]:
    """(held-out losses, index of the chosen candidate): the least loss, ties to the later candidate; without
    ``select`` no scoring and the last candidate (the methods that derive several candidates as they learn)."""
    if not select:
        return [], len(candidates) - 1
    losses = [scorer.loss(c) for c in candidates]
    return losses, min(range(len(candidates)), key=lambda i: (losses[i], -i))
