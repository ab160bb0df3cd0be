"""Value checks of a ``.mbits`` file: only numbers the exporter can write.

The checksum catches damage, not a forger who recomputes it; these checks make sure a forged
file is at least a file the exporter could have written, so loading it never yields numbers
no export produces:

* every 1..8-bit scale lies in :data:`SCALE_RANGE`, where ``quant.weight_scale`` clamps it (so it
  is finite and positive);
* 16-bit and 32-bit weights are finite (the exporter refuses non-finite weights and 16-bit
  weights beyond float16's range);
* no float tensor holds NaN; only those the manifest lists in ``float_infinite`` hold +-inf
  (buffers such as attention masks); BatchNorm ``running_mean``/``running_var`` are finite and
  the variance is not negative.

The per-channel codes of a 2..8-bit layer are checked when they are unpacked
(:func:`mixbits.export.decode.decode_state_dict`): the largest code of a channel is its
bitwidth's largest, as ``quant.weight_codes`` makes it, unless its scale sits at a clamp.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .layout import SCALE_RANGE, corrupt, short_repr
from .records import FloatRecord, LayerRecord

__all__ = ["check_values"]


def _first_bad(mask: torch.Tensor) -> int:
    """Index of the first True of a 1-D bool tensor (which has one)."""
    return int(mask.nonzero()[0, 0])


def check_values(layers: Sequence[LayerRecord], floats: Sequence[FloatRecord], blobs: Mapping[str, torch.Tensor],
                 path: str) -> None:
    """Raise for any stored value the exporter cannot write (see the module doc); O(file size), no copies kept.

    Args:
        layers, floats: the file's records (already checked against the blob sizes).
        blobs: {"scales" | "half" | "float" | ...: 1-D tensor}, of the sizes the records need.
        path: the file, for messages.

    Raises:
        MbitsFormatError: a scale outside :data:`SCALE_RANGE` (NaN, inf, zero, negative included), a
            non-finite 16/32-bit weight, NaN in a float tensor, an undeclared infinity, or BatchNorm
            statistics that are not finite or a negative variance.
    """
    lo, hi = SCALE_RANGE
    scales = blobs["scales"].float()
    bad = ~((scales >= lo) & (scales <= hi))  # NaN fails both comparisons
    if bool(bad.any()):
        i = _first_bad(bad)
        raise corrupt(path, f"scale {i} is {float(scales[i])!r}, outside {lo:g}..{hi:g} where every 1..8-bit "
                            f"scale lies")
    if not bool(torch.isfinite(blobs["half"]).all()):
        raise corrupt(path, "a 16-bit weight is not finite (the exporter stores only finite weights)")
    flt = blobs["float"]
    tail = sum(rec.numel for rec in floats)
    head = flt.numel() - tail  # the 32-bit weights of the layers come first
    if not bool(torch.isfinite(flt[:head]).all()):
        raise corrupt(path, "a 32-bit weight is not finite (the exporter stores only finite weights)")
    rest = flt[head:]
    if bool(torch.isnan(rest).any()):
        raise corrupt(path, "a float tensor holds NaN (the exporter never stores NaN)")
    check_inf = bool(torch.isinf(rest).any())
    cursor = 0
    for rec in floats:
        start, cursor = cursor, cursor + rec.numel
        if not (rec.bn_stat or check_inf):
            continue
        t = rest[start:cursor]
        if rec.bn_stat and not bool(torch.isfinite(t).all()):
            raise corrupt(path, f"BatchNorm statistics {short_repr(rec.key)} are not finite")
        if check_inf and not rec.infinite and bool(torch.isinf(t).any()):
            raise corrupt(path, f"float tensor {short_repr(rec.key)} holds infinities the manifest does not declare "
                                f"in float_infinite")
        if rec.bn_stat and rec.key.endswith("running_var") and bool((t < 0).any()):
            raise corrupt(path, f"BatchNorm variance {short_repr(rec.key)} has a negative value "
                                f"{float(t[_first_bad(t < 0)])!r}")
