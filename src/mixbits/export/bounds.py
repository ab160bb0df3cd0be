"""Work bounds: a ``.mbits`` file's tables are sized against :data:`MAX_TENSORS` and its data before anything is built.

A forged manifest can name a million tensors in a few megabytes. Reading it would build a
Python object per name (seconds, and hundreds of bytes of memory per byte of the file), and
loading would build a state dict of them. These checks reject such a file first: the manifest
text is counted before it is parsed (each string takes two quotes, each element a comma), and
the parsed tables are counted before any record is built.
"""

from __future__ import annotations

from typing import Any

from .layout import MAX_TENSORS, corrupt

__all__ = ["check_text_size", "check_counts", "MIN_LAYER_BYTES", "MAX_STRINGS", "MAX_ELEMENTS"]

MIN_LAYER_BYTES = 2  # the fewest data bytes a quantized layer takes (one weight at 16 bits)
MAX_STRINGS = 8 * MAX_TENSORS + 4096  # a layer row has two strings, a key and an alias one each; the recipe
MAX_ELEMENTS = 24 * MAX_TENSORS + 4096  # a layer row has at most 4 + 8 dims + aliases elements


def check_text_size(text: str, path: str) -> None:
    """Reject a manifest text with more strings or elements than :data:`MAX_TENSORS` tensors need, unparsed.

    Raises:
        MbitsFormatError: too many quotes (strings) or commas (elements).
    """
    strings, elements = text.count('"') // 2, text.count(",")
    if strings > MAX_STRINGS or elements > MAX_ELEMENTS:
        raise corrupt(path, f"the manifest holds {strings:,} strings and {elements:,} elements, more than a file "
                            f"of at most {MAX_TENSORS:,} tensors has")


def _lengths(rows: Any, column: int) -> int:
    """Total length of the list in ``column`` of every row that has one (malformed rows count 0)."""
    if not isinstance(rows, list):
        return 0
    return sum(len(r[column]) for r in rows
               if isinstance(r, list) and len(r) > column and isinstance(r[column], list))


def _values(table: Any) -> int:
    """Total length of the list values of a {name: [...]} table."""
    return sum(len(v) for v in table.values() if isinstance(v, list)) if isinstance(table, dict) else 0


def check_counts(manifest: dict[str, Any], path: str, data_bytes: int) -> None:
    """Count the tensors a parsed manifest names, before any record is built.

    Args:
        manifest: the parsed manifest (a dict).
        path: the file, for messages.
        data_bytes: the bytes of tensor data in the file (file size minus header).

    Raises:
        MbitsFormatError: more than :data:`MAX_TENSORS` state-dict keys in all, or more quantized layers
            than the data can hold (each takes at least :data:`MIN_LAYER_BYTES`).
    """
    layers = manifest.get("layers")
    num_layers = len(layers) if isinstance(layers, list) else 0
    keys = (num_layers + _lengths(layers, 4) + _lengths(manifest.get("floats"), 1)
            + _values(manifest.get("float_aliases")))
    if keys > MAX_TENSORS or _values(manifest.get("layer_keys")) > MAX_TENSORS:
        raise corrupt(path, f"the manifest names {keys:,} tensors; a .mbits file holds at most {MAX_TENSORS:,}")
    if num_layers * MIN_LAYER_BYTES > data_bytes:
        raise corrupt(path, f"the manifest names {num_layers:,} quantized layers, but the file holds only "
                            f"{data_bytes:,} bytes of data (each layer takes at least {MIN_LAYER_BYTES})")
