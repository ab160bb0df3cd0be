"""The constants of the ``.mbits`` layout (see :mod:`mixbits.export.fileformat`), its error class and its checksum."""

from __future__ import annotations

import hashlib
import reprlib
from typing import Any, Mapping

import torch

from ..safetext import printable

__all__ = ["FORMAT_VERSION", "READ_VERSIONS", "METADATA_KEY", "CHECKSUM_KEY", "SCALE_DTYPE", "BLOBS", "LAYER_FIELDS",
           "FLOAT_FIELDS", "GROUPED_ROW_BITS", "RECIPE_ALLOWANCE_BYTES", "MbitsFormatError", "short_repr", "path_repr",
           "corrupt", "checksum", "MAX_HEADER_BYTES", "MAX_NAME_CHARS", "MAX_DIMS", "MAX_DIM", "MAX_TENSORS",
           "SCALE_RANGE", "FLOAT16_MAX", "BN_STATS"]

FORMAT_VERSION = 4
READ_VERSIONS = (2, 3, 4)  # version 2 is version 3 without structures; 3 is 4 with a ternary 2-bit quantizer
METADATA_KEY = "mixbits"
CHECKSUM_KEY = "mixbits_sha256"
MAX_HEADER_BYTES = 16 << 20  # a ResNet-20's header is 3 KB; this bounds what is parsed before the checksum
MAX_NAME_CHARS = 1024  # a module or state-dict key
MAX_DIMS = 8
MAX_DIM = 1 << 40
MAX_TENSORS = 1 << 14  # state-dict keys a file may name (layers, floats, aliases): bounds the work to read one
SCALE_RANGE = (2.0 ** -14, 60000.0)  # where mixbits.quant.weight_scale clamps every 1..8-bit scale
FLOAT16_MAX = 65504.0  # the largest finite float16: 16-bit weights beyond it would be stored as inf
BN_STATS = ("running_mean", "running_var")  # BatchNorm statistics: finite, and the variance not negative
SCALE_DTYPE = "float16"
LAYER_FIELDS = ("name", "kind", "shape", "bits", "aliases")  # aliases only when the weight is shared
FLOAT_FIELDS = ("module", "names", "shape")  # one row per run of same-shaped tensors of one module
RECIPE_ALLOWANCE_BYTES = 320  # the header bound's room for the model recipe, input shape and mixbits version
BLOBS = {"codes": torch.uint8, "scales": torch.float16, "half": torch.float16, "float": torch.float32,
         "group_bits": torch.uint8}
GROUPED_ROW_BITS = 0  # the bits a layer with structures has in its manifest row


class MbitsFormatError(ValueError):
    """A file that is not a valid ``.mbits`` file: truncated, corrupted, inconsistent or of another version."""


_short = reprlib.Repr()
_short.maxstring, _short.maxother, _short.maxlist, _short.maxdict, _short.maxlevel = 60, 60, 6, 6, 3


def short_repr(value: Any) -> str:
    """``repr`` cut to a few dozen characters and three levels (error messages about untrusted data).

    ``repr`` escapes control characters, bidi overrides and lone surrogates; :func:`printable` makes sure.
    """
    return printable(_short.repr(value))


def path_repr(path: str) -> str:
    """A file name for messages: quoted, its last 200 characters at most."""
    return printable(repr(path if len(path) <= 200 else "..." + path[-200:]))


def corrupt(path: str, why: str) -> MbitsFormatError:
    """The error for a damaged or inconsistent file: ``'<path>' is not a valid .mbits file: <why>``."""
    return MbitsFormatError(f"{path_repr(path)} is not a valid .mbits file: {why}")


def checksum(manifest_text: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the manifest text, then of each tensor's name, dtype, shape and bytes in blob order."""
    h = hashlib.sha256()
    for start in range(0, len(manifest_text), 1 << 20):  # in slices: no second copy of a large manifest
        h.update(manifest_text[start:start + (1 << 20)].encode("utf-8"))
    for name in BLOBS:
        if name in tensors:
            t = tensors[name].contiguous()
            h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())  # needs dim >= 1: the reader checks shapes first
    return h.hexdigest()

