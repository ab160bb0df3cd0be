"""What an input needs before the model sees it, kept with the model: the ``preprocessing`` manifest field.

A model trained by mixbits sees images scaled to [0, 1] (uint8 / 255) and then normalised per
channel, ``(x - mean) / std``. The ``.mbits`` manifest may hold (format version 3, optional)::

    "preprocessing": {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616],
                      "class_names": ["airplane", ...]}          # class_names optional

``mean`` and ``std`` have one number per input channel (or one for all), finite, ``std > 0``;
with an ``input_shape`` in the manifest their length is 1 or its channel count. ``class_names``
has one string per output class (label ``i`` is ``class_names[i]``). Files without the field
load as before. :func:`mixbits.load` exposes it as ``model.mixbits_preprocessing`` and the ONNX
exports copy it into ``metadata_props["mixbits.preprocessing"]`` (JSON).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["Preprocessing", "parse_preprocessing", "MANIFEST_KEY"]

MANIFEST_KEY = "preprocessing"
MAX_CHANNELS = 4096
MAX_CLASSES = 100_000
MAX_NAME_CHARS = 200


@dataclass(frozen=True)
class Preprocessing:
    """Input normalisation and class names of a model.

    Attributes:
        mean, std: per-channel normalisation of inputs scaled to [0, 1], one value per channel (or one).
        class_names: label ``i``'s name at index ``i``; empty when unknown.

    Raises:
        ValueError: non-finite values, a ``std`` that is not positive, lengths that disagree,
            or class names that are not short strings.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for what in ("mean", "std"):
            vals = getattr(self, what)
            if isinstance(vals, (str, bytes)) or not isinstance(vals, Sequence) or not 0 < len(vals) <= MAX_CHANNELS:
                raise ValueError(f"preprocessing {what} must be a list of 1..{MAX_CHANNELS} numbers, got {vals!r:.80}")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in vals):
                raise ValueError(f"preprocessing {what} must hold finite numbers, got {vals!r:.80}")
            object.__setattr__(self, what, tuple(float(v) for v in vals))
        if len(self.mean) != len(self.std):
            raise ValueError(f"preprocessing mean and std differ in length ({len(self.mean)} and {len(self.std)}): "
                             f"give one value per input channel for both")
        if min(self.std) <= 0:
            raise ValueError(f"preprocessing std must be positive, got {list(self.std)}")
        names = self.class_names
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) or len(names) > MAX_CLASSES or not all(
                isinstance(n, str) and len(n) <= MAX_NAME_CHARS for n in names):
            raise ValueError(f"class_names must be a list of strings of at most {MAX_NAME_CHARS} characters")
        object.__setattr__(self, "class_names", tuple(names))

    def check_input_shape(self, input_shape: Sequence[int] | None) -> None:
        """Raise ValueError unless mean/std have 1 value or one per channel (``input_shape[0]``)."""
        if input_shape and len(self.mean) not in (1, int(input_shape[0])):
            raise ValueError(f"preprocessing has {len(self.mean)} channel statistics, but the input shape "
                             f"{list(input_shape)} has {input_shape[0]} channels")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mean": list(self.mean), "std": list(self.std)}
        if self.class_names:
            out["class_names"] = list(self.class_names)
        return out

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` over the channels (dim 1) of a batch ``x`` (B, C, ...) scaled to [0, 1]."""
        view = (1, -1) + (1,) * max(0, x.dim() - 2)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(view)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(view)
        return (x - mean) / std


def parse_preprocessing(value: Any, input_shape: Sequence[int] | None = None) -> Preprocessing | None:
    """The manifest's ``preprocessing`` field, checked (None when absent).

    Raises:
        ValueError: a field that is not ``{"mean": [...], "std": [...], "class_names": [...]}`` with
            valid values (see :class:`Preprocessing`).
    """
    if value is None:
        return None
    if not isinstance(value, dict) or not {"mean", "std"} <= set(value) <= {"mean", "std", "class_names"}:
        raise ValueError("preprocessing must be {'mean': [...], 'std': [...]} with optional 'class_names'")
    pre = Preprocessing(mean=value["mean"], std=value["std"], class_names=value.get("class_names", ()))
    pre.check_input_shape(input_shape)
    return pre
