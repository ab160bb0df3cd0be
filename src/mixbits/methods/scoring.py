"""Held-out loss of a discrete assignment: the score black-box and selecting methods compare.

:class:`HeldOutScorer` gathers a fixed set of training-split images once (at most
``calibration`` of them, from the held-out split, never the test split), and scores an
assignment by fixing the model at its bits, re-estimating the BatchNorm statistics on
the first of those images (when the model has BatchNorm), and averaging a loss over all
of them with no gradient: the cross-entropy with the labels (``objective="ce"``), or the
KL divergence from the float model's predictions (``objective="kl"``, as EvoPress scores:
it uses the whole output distribution, not one label per image, and needs no labels). The
float predictions are computed once, when the scorer is built, from the model as it is then
(every layer at float, its BatchNorm statistics as loaded). Each candidate's quantized weight is
cached per layer (:class:`mixbits.mixture.Decision`), so switching assignments costs
forwards only. Scores are memoised per assignment.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..bitspace import BitSpace
from ..cost import Bits
from ..quant import FLOAT_BITS
from ..train import recalibrate_bn_

__all__ = ["HeldOutScorer", "gather_images", "has_batchnorm", "OBJECTIVES"]

_CHUNK = 256  # images per scoring forward
OBJECTIVES = ("ce", "kl")


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has BatchNorm layers that track running statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


def gather_images(loader: Iterable, limit: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``limit`` (inputs, labels) of ``loader`` (cycled once more if it holds fewer), on ``device``.

    Raises:
        ValueError: the loader is empty.
    """
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
    """Loss of the model at a given assignment on fixed training-split images.

    Args:
        model: the prepared model (float weights; they are never changed).
        space: its BitSpace.
        loader: batches to take the images from (the held-out split).
        images: how many images to score on.
        bn_images: how many of them re-estimate the BatchNorm statistics (models with BatchNorm).
        device: where model and images live.
        objective: ``"ce"`` (cross-entropy with the labels) or ``"kl"`` (KL divergence from the
            float model's predictions, over the class dimension 1 of the outputs).

    Raises:
        ValueError: an unknown objective.
    """

    def __init__(self, model: nn.Module, space: BitSpace, loader: Iterable, *, images: int = 1024,
                 bn_images: int = 512, device: torch.device | str = "cpu", objective: str = "ce") -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.model, self.space, self.device = model, space, torch.device(device)
        self.objective = objective
        self.x, self.y = gather_images(loader, images, self.device)
        self.bn = has_batchnorm(model)
        self.bn_batches = [(self.x[i:i + _CHUNK], None) for i in range(0, min(bn_images, len(self.y)), _CHUNK)]
        self.cache: dict[tuple, float] = {}
        self.evaluations = 0
        self.float_logp = self._float_log_probs() if objective == "kl" else None

    @torch.no_grad()
    def _float_log_probs(self) -> torch.Tensor:
        """Log-probabilities of the float model (every layer at float, BatchNorm as loaded) on the images."""
        decisions = self.space.decision_list
        before = [d.fixed_bits for d in decisions]
        was = self.model.training
        try:
            for d in decisions:
                d.fixed_bits = FLOAT_BITS if d.groups == 1 else (FLOAT_BITS,) * d.groups
            self.model.eval()
            return torch.cat([F.log_softmax(self.model(self.x[i:i + _CHUNK]).float(), 1)
                              for i in range(0, len(self.y), _CHUNK)])
        finally:
            for d, b in zip(decisions, before):
                d.fixed_bits = b
            self.model.train(was)

    def _chunk_loss(self, out: torch.Tensor, lo: int, hi: int) -> float:
        """Summed loss of the outputs ``out`` of images ``lo:hi``."""
        if self.float_logp is None:
            return float(F.cross_entropy(out.float(), self.y[lo:hi], reduction="sum"))
        return float(F.kl_div(F.log_softmax(out.float(), 1), self.float_logp[lo:hi], reduction="sum",
                              log_target=True))

    def key(self, bits: Mapping[str, Bits]) -> tuple:
        return tuple(bits[n] for n in self.space.names)

    @torch.no_grad()
    def loss(self, bits: Mapping[str, Bits], images: int | None = None) -> float:
        """Mean loss (per image) at ``bits`` on the first ``images`` images (all by default); memoised."""
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
            total += self._chunk_loss(self.model(self.x[i:min(i + _CHUNK, n)]), i, min(i + _CHUNK, n))
        self.model.train(was)
        self.evaluations += 1
        self.cache[k] = total / n
        return self.cache[k]

    def info(self) -> dict[str, Any]:
        return {"scored_images": len(self.y), "evaluations": self.evaluations, "batchnorm": self.bn,
                "objective": self.objective}
