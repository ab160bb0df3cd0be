"""What ``mixbits inspect`` shows: per-layer bits (per structure where a layer has structures), sizes and the
totals of a ``.mbits`` file."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .exporter import size_bound_bytes
from .fileformat import MbitsFile, read_mbits

__all__ = ["describe"]


def describe(path: str | Path | MbitsFile) -> dict[str, Any]:
    """Per-layer rows and totals of a ``.mbits`` file, read and checked without building the model.

    Returns:
        {"path", "format_version", "model", "input_shape", "preprocessing" (None when not recorded),
        "layers": [row], "totals": {...}}; sizes in
        bytes (a 1..8-bit layer stores one float16 scale per index of ``shape[channel_dim]``). A row is
        {name, aliases, kind, shape, channel_dim, weights, bits, group_size, structures, structure_bits,
        average_bits, stored_bytes}: ``bits`` is an int, or for a layer with bits per structure the list
        of its structures' bits; ``group_size`` is 0 and ``structures`` 1 for a layer with one bitwidth;
        ``structure_bits`` is {bits: structures at those bits}, ascending; ``average_bits`` the
        weight-weighted mean bitwidth (scales not included).

    Names, kinds and the recipe are the file's strings as they are: print them through
    :func:`mixbits.safetext.printable` (``mixbits inspect`` does), as they may hold control
    characters, bidi overrides or lone surrogates.

    Raises:
        FileNotFoundError, ValueError: as :func:`read_mbits`.
    """
    f = path if isinstance(path, MbitsFile) else read_mbits(path)
    m = f.manifest
    rows = [{"name": rec.name, "aliases": list(rec.aliases), "kind": rec.kind, "shape": list(rec.shape),
             "channel_dim": rec.channel_dim, "weights": rec.num_weights,
             "bits": list(rec.group_bits) if rec.grouped else rec.bits,
             "group_size": rec.group_size if rec.grouped else 0, "structures": rec.num_groups,
             "structure_bits": dict(sorted(Counter(rec.group_bits).items())) if rec.grouped else {rec.bits: 1},
             "average_bits": rec.average_bits, "stored_bytes": rec.stored_bytes} for rec in f.layers]
    quantized_bytes = sum(r["stored_bytes"] for r in rows)
    num_weights = sum(r["weights"] for r in rows)
    float_rest_bytes = 4 * sum(rec.numel for rec in f.floats)  # stored as float32
    promised = m.get("promised_model_bits")
    totals: dict[str, Any] = {
        "file_bytes": f.file_bytes,
        "header_bytes": f.header_bytes,
        "quantized_weight_bytes": quantized_bytes,
        "float_rest_bytes": float_rest_bytes,
        "num_quantized_weights": num_weights,
        "average_bits": 8 * quantized_bytes / num_weights if num_weights else 0.0,
        "weight_compression": 4 * num_weights / quantized_bytes if quantized_bytes else 0.0,
        "promised_bytes": promised / 8 if isinstance(promised, int) else None,
    }
    if totals["promised_bytes"] is not None:
        diff = f.file_bytes - totals["promised_bytes"]
        totals["difference_bytes"] = diff
        totals["within_bound"] = abs(diff) <= size_bound_bytes(totals["promised_bytes"])
    if isinstance(m.get("float_model_bits"), int):
        totals["file_compression"] = m["float_model_bits"] / 8 / f.file_bytes
    return {"path": f.path, "format_version": m.get("format_version"), "mixbits_version": m.get("mixbits_version"),
            "model": m.get("model"), "input_shape": m.get("input_shape"), "preprocessing": m.get("preprocessing"),
            "layers": rows,
            "float_tensors": len(f.floats), "totals": totals}
