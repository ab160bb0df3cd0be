"""The constants of the ``.mbits`` layout (see :mod:`mixbits.export.fileformat`), its error class and its checksum."""

from __future__ import annotations

import hashlib
import reprlib
from typing import Any, Mapping

import torch

__all__ = ["FORMAT_VERSION", "READ_VERSIONS", "METADATA_KEY", "CHECKSUM_KEY", "SCALE_DTYPE", "BLOBS", "LAYER_FIELDS",
           "FLOAT_FIELDS", "GROUPED_ROW_BITS", "RECIPE_ALLOWANCE_BYTES", "MbitsFormatError", "short_repr", "path_repr",
           "corrupt", "checksum"]

FORMAT_VERSION = 3
READ_VERSIONS = (2, 3)  # version 2 is version 3 without structures
METADATA_KEY = "mixbits"
CHECKSUM_KEY = "mixbits_sha256"
MAX_HEADER_BYTES = 16 << 20  # a ResNet-20's header is 3 KB; this bounds what is parsed before the checksum
MAX_NAME_CHARS = 1024  # a module or state-dict key
MAX_DIMS = 8
MAX_DIM = 1 << 40
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
    """``repr`` cut to a few dozen characters and three levels (error messages about untrusted data)."""
    return _short.repr(value)


def path_repr(path: str) -> str:
    """A file name for messages: quoted, its last 200 characters at most."""
    return repr(path if len(path) <= 200 else "..." + path[-200:])



def corrupt(path: str, why: str) -> MbitsFormatError:
    return MbitsFormatError(f"{path_repr(path)} is not a valid .mbits file: {why}")



def checksum(manifest_text: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the manifest text, then of each tensor's name, dtype, shape and bytes in blob order."""
    h = hashlib.sha256(manifest_text.encode("utf-8"))
    for name in BLOBS:
        if name in tensors:
            t = tensors[name].contiguous()
            h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()

