"""Size targets: parse what the user asks for and turn it into a budget in bits.

A target is one of

* a weight-compression ratio, ``"24x"``: float32 size of the quantized layers'
  weights over their quantized size (scales included);
* a file size, ``"300KB"``, ``"1.2MB"``, ``"512KiB"``, ``"40000B"`` (KB/MB/GB are powers
  of 1000, KiB/MiB/GiB powers of 1024): the exported ``.mbits`` file, header included, is at
  most that large (``CostModel.file_overhead_bits`` bounds the header);
* an average number of bits per quantized weight (scales included), ``"1.5bits"``.

A compression or average-bits target binds the quantized weights alone by default; with the
scope suffix ``:model`` it binds the whole model, everything kept in float included:
``"16x:model"`` is a whole-model compression of 16x (float32 model over quantized weights
plus float rest), ``"2bits:model"`` two bits per parameter of the model. ``":weights"``
names the default scope. A file size always binds the whole file.

Every target becomes the same thing: the largest number of bits the quantized
layers' weights may occupy, checked against what the candidates can reach
before any training starts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # parsing a target stays free of torch (argument checks of the CLI)
    from .cost import CostModel

__all__ = ["Target", "SCOPES", "parse_target", "with_scope", "budget_bits", "reachable_range"]

_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_PATTERN = re.compile(r"^\s*([+-]?[0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]+)\s*$", re.IGNORECASE)
_HELP = ('write a target as a compression ("24x"), a file size ("12KB", "1.2MB", "12KiB") or average bits ("1.5bits"), '
         'optionally with a scope: "16x:model" binds the whole model, "16x:weights" (the default) the quantized weights')
SCOPES = ("weights", "model")


@dataclass(frozen=True)
class Target:
    """A parsed size target.

    Attributes:
        kind: ``"compression"``, ``"size_bytes"`` or ``"average_bits"``.
        value: the ratio, the number of bytes, or the bits per weight.
        text: what the user wrote.
        scope: ``"weights"`` (the quantized weights) or ``"model"`` (the whole model); a file
            size is always ``"model"``.
    """

    kind: str
    value: float
    text: str
    scope: str = "weights"


def parse_target(text: str | Target) -> Target:
    """Parse ``"24x"``, ``"300KB"`` or ``"1.5bits"``.

    Raises:
        ValueError: unparseable, zero or negative target.
    """
    if isinstance(text, Target):
        return text
    body, sep, scope = str(text).rpartition(":")
    if not sep:
        body, scope = str(text), "weights"
    scope = scope.strip().lower()
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r} in target {text!r}: use :weights or :model")
    m = _PATTERN.match(body)
    if not m:
        raise ValueError(f"cannot parse target {text!r}: {_HELP}")
    value, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"target {text!r} must be positive: {_HELP}")
    if unit == "x":
        return Target("compression", value, str(text), scope)
    if unit in ("bit", "bits"):
        return Target("average_bits", value, str(text), scope)
    if unit in _UNITS:
        return Target("size_bytes", value * _UNITS[unit], str(text), "model")
    raise ValueError(f"unknown unit {unit!r} in target {text!r}: {_HELP}")


def with_scope(text: str, scope: str | None) -> str:
    """``text`` with the scope ``scope`` (``"weights"`` or ``"model"``; None keeps the text), checked.

    Raises:
        ValueError: an unknown scope, a target that already names another scope, or a bad target.
    """
    if scope is None:
        return str(text)
    if scope not in SCOPES:
        raise ValueError(f"unknown target scope {scope!r}: use one of {', '.join(SCOPES)}")
    t = parse_target(text)
    if ":" in str(text) and t.scope != scope:
        raise ValueError(f"target {text!r} names scope {t.scope!r} but scope {scope!r} was asked for: give one")
    return str(text) if ":" in str(text) else f"{text}:{scope}"


def budget_bits(target: str | Target, cost: CostModel) -> int:
    """The largest size in bits the quantized weights may take under ``target``.

    Raises:
        ValueError: the target is below what the smallest candidates reach, or above
            the float model; the message gives the reachable range in the target's units.
    """
    t = parse_target(target)
    n = cost.num_quantized_weights
    fq = cost.float_quantized_bits()
    lo, hi = cost.min_quantized_bits(), cost.max_quantized_bits()
    rest = cost.float_rest_bits
    n_all = cost.num_params if cost.num_params is not None else n
    if t.kind == "compression" and t.scope == "model":
        fm = cost.float_model_bits()
        budget = math.floor(fm / t.value) - rest
        reach = (f"between {fm / (hi + rest):.3g}x and {fm / (lo + rest):.4g}x of whole-model compression (the "
                 f"tensors kept in float take {rest / 8000:.4g} KB; quantize more of them with params=)")
    elif t.kind == "compression":
        budget = math.floor(fq / t.value)
        reach = f"between {fq / hi:.3g}x and {fq / lo:.4g}x"
    elif t.kind == "average_bits" and t.scope == "model":
        budget = math.floor(t.value * n_all) - rest
        reach = f"between {(lo + rest) / n_all:.4g} and {(hi + rest) / n_all:.4g} bits per parameter of the model"
    elif t.kind == "average_bits":
        budget = math.floor(t.value * n)
        reach = f"between {lo / n:.4g} bits and {hi / n:.4g} bits"
    else:  # the whole .mbits file: quantized weights, everything kept in float, the header
        rest = cost.float_rest_bits + cost.file_overhead_bits
        budget = math.floor(t.value * 8) - rest
        reach = (f"between {(lo + rest) / 8000:.4g} KB and {(hi + rest) / 8000:.4g} KB of file (the layers kept "
                 f"in float take {cost.float_rest_bits / 8000:.4g} KB, the file header at most "
                 f"{cost.file_overhead_bits / 8000:.4g} KB)")
    if budget < lo:
        raise ValueError(
            f"target {t.text!r} is unreachable: even every layer at its smallest candidate is larger. "
            f"This model can reach targets {reach}; ask for less compression, add smaller candidates "
            f"(e.g. 1 bit) or unpin layers."
        )
    if budget > hi:
        raise ValueError(
            f"target {t.text!r} is larger than the model at its largest candidates: nothing to compress. "
            f"This model can reach targets {reach}."
        )
    return budget


def reachable_range(cost: CostModel) -> dict[str, tuple[float, float]]:
    """What each kind of target can reach on this model, known right after ``prepare_``.

    Returns:
        {"compression": (x, x) weight compression, "model_compression": (x, x) whole-model
        compression, "size_bytes": (B, B) file size, header included, "average_bits": (bits, bits)};
        each (least, most) compressed.
    """
    n, fq, rest = cost.num_quantized_weights, cost.float_quantized_bits(), cost.float_rest_bits
    lo, hi = cost.min_quantized_bits(), cost.max_quantized_bits()
    file_rest = rest + cost.file_overhead_bits
    return {
        "compression": (fq / hi, fq / lo),
        "model_compression": (cost.float_model_bits() / (hi + rest), cost.float_model_bits() / (lo + rest)),
        "size_bytes": ((hi + file_rest) / 8, (lo + file_rest) / 8),
        "average_bits": (hi / n, lo / n),
    }
