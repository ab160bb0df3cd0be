"""Reading a ``.mbits`` file: bytes -> checksum -> manifest -> validated :class:`MbitsFile`, never unpickling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .bounds import check_counts, check_text_size
from .layout import (BLOBS, CHECKSUM_KEY, MAX_HEADER_BYTES, METADATA_KEY, READ_VERSIONS, MbitsFormatError, checksum,
                     corrupt, path_repr, short_repr)
from .records import MbitsFile, expected_blob_sizes
from .validate import check_fields, parse_records
from .values import check_values

__all__ = ["read_mbits"]



def _json(raw: bytes | str, path: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer
        raise corrupt(path, f"{what} is not valid JSON ({str(exc)[:100]})") from None


def read_mbits(path: str | Path) -> MbitsFile:
    """Read and validate a ``.mbits`` file (version 2 or 3) without building any model and without unpickling.

    In order: the tensor table (names, dtypes, 1-D) before anything reads the tensors; the
    checksum before the manifest is parsed; the manifest's size (:mod:`.bounds`) before it is
    parsed and its tables' sizes before any record is built; every field (types, bounds, the
    key map, consistency with the tensors, :mod:`.validate`), the per-structure bits decoded
    from ``group_bits``; then the values (:mod:`.values`): only numbers the exporter writes.

    Raises:
        FileNotFoundError: no such file.
        MbitsFormatError: (a ValueError) an empty, truncated, corrupted or inconsistent file, a
            safetensors file that is not a mixbits export, a format version this mixbits does not
            read, or values the exporter never writes.
    """
    from safetensors.torch import load

    p = Path(path)
    path = str(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file {path_repr(path)} does not exist")
    data = p.read_bytes()
    if not data:
        raise corrupt(path, "the file is empty (0 bytes); export the model again (mixbits export RUN_FOLDER)")
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < header_len <= min(len(data) - 8, MAX_HEADER_BYTES):
        what = (f"a header of {header_len:,} bytes in a file of {len(data):,}" if header_len >= 0
                else f"only {len(data)} bytes, fewer than a length prefix")
        raise corrupt(path, f"truncated or corrupted ({what}; a .mbits file starts with the 8-byte length of its "
                            f"header: is it a file written by mixbits export?)")
    try:  # decoded straight from the buffer: no copy of the header's bytes next to the text
        header_text = str(memoryview(data)[8:8 + header_len], "utf-8")
    except UnicodeDecodeError as exc:
        raise corrupt(path, f"the safetensors header is not valid JSON ({str(exc)[:100]})") from None
    header = _json(header_text, path, "the safetensors header")
    del header_text
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise corrupt(path, "a safetensors file without a mixbits manifest (was it written by mixbits export?)")
    text, digest = meta[METADATA_KEY], meta.get(CHECKSUM_KEY)
    if not isinstance(text, str):
        raise corrupt(path, "the manifest is not a string")
    try:
        tensors = load(data)
    except Exception as exc:  # SafetensorError: bad length prefix, broken header, truncated data
        raise corrupt(path, f"truncated or corrupted ({str(exc)[:100]})") from None
    _check_tensor_table(tensors, path)  # before the checksum reads them
    if digest is None:
        version = _unchecked_version(text)
        if version is not None and version < min(READ_VERSIONS):
            check_fields({"format_version": version}, path)
        raise corrupt(path, f"it lacks its checksum ({CHECKSUM_KEY})")
    try:
        expected_digest = checksum(text, tensors)
    except UnicodeEncodeError:
        raise corrupt(path, "the manifest holds a lone surrogate (\\ud800-\\udfff), which no text encodes") from None
    if digest != expected_digest:
        raise corrupt(path, "checksum mismatch: the manifest or the data are corrupted")
    check_text_size(text, path)
    manifest = _json(text, path, "the manifest")
    if not isinstance(manifest, dict):
        raise corrupt(path, "the manifest is not a JSON object")
    check_fields(manifest, path)
    check_counts(manifest, path, len(data) - 8 - header_len)
    layers, floats = parse_records(manifest, path, tensors.get("group_bits"))
    if manifest["format_version"] < 4:
        old = [rec.name for rec in layers if 2 in (rec.group_bits if rec.grouped else (rec.bits,))]
        if old:
            raise MbitsFormatError(
                f"{path_repr(path)} (format version {manifest['format_version']}) holds 2-bit layers "
                f"({short_repr(old[:3])}) whose codes are the ternary levels of older mixbits releases; this "
                f"mixbits reads 2-bit codes as four levels: export it again (mixbits export RUN_FOLDER)")
    expected = expected_blob_sizes(layers, floats)
    blobs = {}
    for name, dtype in BLOBS.items():
        t = tensors.get(name, torch.zeros(0, dtype=dtype))
        if t.numel() != expected[name]:
            raise corrupt(path, f"tensor {name!r} holds {t.numel()} {t.dtype} values, the manifest needs "
                                f"{expected[name]} {dtype}")
        blobs[name] = t
    check_values(layers, floats, blobs, path)
    return MbitsFile(path=path, manifest=manifest, layers=layers, floats=floats, blobs=blobs,
                     file_bytes=len(data), header_bytes=8 + header_len)


def _check_tensor_table(tensors: dict[str, torch.Tensor], path: str) -> None:
    """Every tensor one of :data:`BLOBS`, of its dtype and 1-D, before anything reads its bytes."""
    unknown = sorted(set(tensors) - set(BLOBS))
    if unknown:
        raise corrupt(path, f"unexpected tensors {short_repr(unknown)}")
    for name, t in tensors.items():
        if t.dtype != BLOBS[name] or t.dim() != 1:
            want = str(BLOBS[name]).replace("torch.", "")
            raise corrupt(path, f"tensor {name!r} holds {str(t.dtype).replace('torch.', '')} values of shape "
                                f"{short_repr(list(t.shape))}, not a 1-D {want} tensor")


def _unchecked_version(text: str) -> int | None:
    """The format version of an unchecked manifest text, if it plainly has one (for the upgrade message)."""
    try:
        v = json.loads(text[:100_000]).get("format_version")
    except (ValueError, RecursionError, AttributeError):
        return None
    return v if type(v) is int else None

