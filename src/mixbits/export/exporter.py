"""``export_model``: a fake-quantized model at fixed bits -> a packed ``.mbits`` file.

The file holds what the cost model counts and nothing else, so its size on disk
is the promised ``space.cost.model_bits(bits) / 8`` plus the safetensors header
and at most one byte of padding per quantized layer (per distinct 1..8 bitwidth of a
layer with bits per structure, whose 4-bit structure codes the cost model counts);
``space.cost.file_overhead_bits`` bounds those two before any bits are chosen, so a
size target bounds the whole file.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..cost import Bits
from ..space import BitSpace
from ..targets import unwrap_compiled
from .fileformat import (FORMAT_VERSION, SCALE_DTYPE, LayerRecord, encode_tensors, float_records, records_to_json,
                         write_mbits)
from .preprocessing import MANIFEST_KEY as PREPROCESSING_KEY
from .preprocessing import Preprocessing, parse_preprocessing

__all__ = ["ExportResult", "export_model", "size_bound_bytes", "model_source"]

log = logging.getLogger(__name__)

HEADER_ALLOWANCE_BYTES = 4096  # the fixed header the size promise allows on top of 2%
RELATIVE_ALLOWANCE = 0.02


def size_bound_bytes(promised_bytes: float) -> float:
    """Largest allowed difference between the file size and the promised size: 2% plus 4 KiB."""
    return RELATIVE_ALLOWANCE * promised_bytes + HEADER_ALLOWANCE_BYTES


@dataclass(frozen=True)
class ExportResult:
    """What was written, and how its size compares with the cost model's promise.

    Attributes:
        path: the ``.mbits`` file.
        promised_bytes: ``space.cost.model_bits(bits) / 8``.
        file_bytes: size on disk.
        header_bytes: safetensors header (tensor table and JSON manifest) within ``file_bytes``.
        quantized_weight_bytes: bytes the file spends on the quantized layers' weights (codes and scales,
            and the 4-bit bitwidth codes of layers with bits per structure).
        float_quantized_bytes: the same weights in float32.
        float_model_bytes: the whole float32 model.
        file_bound_bytes: the most the file may take, the promise plus the cost model's header bound
            (``file_overhead_bits``): what size targets such as ``"12KB"`` are checked against.
    """

    path: str
    promised_bytes: float
    file_bytes: int
    header_bytes: int
    quantized_weight_bytes: int
    float_quantized_bytes: int
    float_model_bytes: float
    file_bound_bytes: float = float("inf")

    @property
    def difference_bytes(self) -> float:
        return self.file_bytes - self.promised_bytes

    @property
    def within_bound(self) -> bool:
        """Whether the file is within 2% plus 4 KiB of the promised size."""
        return abs(self.difference_bytes) <= size_bound_bytes(self.promised_bytes)

    @property
    def weight_compression(self) -> float:
        """float32 size of the quantized layers' weights over the bytes the file stores them in."""
        return self.float_quantized_bytes / self.quantized_weight_bytes

    @property
    def file_compression(self) -> float:
        """The whole float32 model over the whole file, header included."""
        return self.float_model_bytes / self.file_bytes


def model_source(*, zoo: str | None = None, import_path: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest's recipe for rebuilding the model, checked.

    Args:
        zoo: a name of the :mod:`mixbits.models` registry.
        import_path: ``package.module:function`` returning the model (any callable attribute).
        model_kwargs: keyword arguments of the builder (JSON values only).

    Returns:
        {"zoo" | "import": ..., "kwargs": {...}}, or None when neither is given.

    Raises:
        ValueError: both given, a malformed import path, or kwargs that JSON cannot hold.
    """
    if zoo is not None and import_path is not None:
        raise ValueError("give either zoo= or import_path=, not both")
    kwargs = dict(model_kwargs or {})
    try:
        if json.loads(json.dumps(kwargs)) != kwargs:
            raise TypeError("values change in a JSON round trip (tuples or non-string keys?)")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"model_kwargs must be plain JSON values (numbers, strings, lists, dicts): {exc}") from None
    if zoo is not None:
        return {"zoo": str(zoo), "kwargs": kwargs}
    if import_path is not None:
        module, sep, attr = str(import_path).partition(":")
        if not sep or not module or not attr:
            raise ValueError(f"import path must look like package.module:function, got {import_path!r}")
        return {"import": str(import_path), "kwargs": kwargs}
    if kwargs:
        raise ValueError("model_kwargs given without zoo= or import_path=")
    return None


def _mixbits_version() -> str:
    try:
        return importlib.metadata.version("mixbits")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


@torch.no_grad()
def export_model(model: nn.Module, space: BitSpace, path: str | Path, *,
                 bits: Mapping[str, Bits | Sequence[int]] | None = None,
                 zoo: str | None = None, import_path: str | None = None,
                 model_kwargs: Mapping[str, Any] | None = None,
                 input_shape: tuple[int, ...] | None = None,
                 preprocessing: Preprocessing | Mapping[str, Any] | None = None) -> ExportResult:
    """Write a prepared model at fixed bits to a packed ``.mbits`` file (atomically).

    Args:
        model: the prepared model (``prepare_``), e.g. after ``finetune_``.
        space: its BitSpace.
        path: the file to write; its folder must exist.
        bits: {layer name: bits}: an int, or for a layer with structures (``LayerInfo.group_size``)
            one int per structure (a tuple or list; an int applies to all of them); default the
            bits fixed on ``space`` (``space.fix_``).
        zoo, import_path, model_kwargs: how :func:`mixbits.load` rebuilds the model without
            being given one (see :func:`model_source`); without them, ``load`` needs ``model=``.
        input_shape: one sample's shape without the batch dimension, e.g. (3, 32, 32); kept in
            the manifest for the ONNX export.
        preprocessing: the input normalisation (and class names) the model expects, a
            :class:`~mixbits.export.preprocessing.Preprocessing` or its JSON form; kept in the manifest,
            exposed by :func:`mixbits.load` and copied into the ONNX metadata.

    Returns:
        the :class:`ExportResult` (promised and measured sizes).

    Raises:
        ValueError: no fixed bits, bits that do not match ``space``, a space that does not
            belong to ``model``, a bad model source or bad preprocessing values.
    """
    source = model_source(zoo=zoo, import_path=import_path, model_kwargs=model_kwargs)
    model = unwrap_compiled(model)  # state keys without torch.compile's "_orig_mod." prefix
    if preprocessing is not None and not isinstance(preprocessing, Preprocessing):
        preprocessing = parse_preprocessing(dict(preprocessing))
    if preprocessing is not None:
        preprocessing.check_input_shape(input_shape)
    if bits is None:
        bits = space.fixed_bits()
        if bits is None:
            raise ValueError("the model's bits are not fixed: pass bits= or call space.fix_(bits) first")
    # canonical bits, checked against the layers: ints, tuples for layers with structures
    bits = space.cost.normalize({str(k): v for k, v in bits.items()})
    promised_bits = space.cost.model_bits(bits)

    model_params = {id(p) for p in model.parameters()}
    layers: list[tuple[LayerRecord, torch.Tensor]] = []
    quantized_ids: set[int] = set()
    for info in space.layers:
        w = space.float_weight(info.name)
        if id(w) not in model_params:
            raise ValueError(f"layer {info.name!r} of the BitSpace is not in the model: pass the space that "
                             f"prepare_ returned for this model")
        layers.append((LayerRecord(name=info.name, aliases=info.aliases, kind=info.kind, shape=tuple(w.shape),
                                   bits=bits[info.name], keys=info.state_keys, channel_dim=info.channel_dim,
                                   group_size=info.group_size if info.grouped else 0), w))
        quantized_ids.add(id(w))

    # Everything else that is floating, once per tensor, under all its state-dict keys.
    floats = float_records(model, quantized_ids)
    stored_float_bits = 32 * sum(t.numel() for _, t in floats)
    if stored_float_bits != space.cost.float_rest_bits:
        # Non-persistent buffers are counted by the cost model but rebuilt by the model itself.
        log.info("float tensors stored: %d bits; the cost model counts %d", stored_float_bits,
                 space.cost.float_rest_bits)

    manifest = {
        "format_version": FORMAT_VERSION,
        "mixbits_version": _mixbits_version(),
        "scale_dtype": SCALE_DTYPE,
        "bit_order": "little",
        "model": source,
        "input_shape": list(input_shape) if input_shape is not None else None,
        **({PREPROCESSING_KEY: preprocessing.to_json()} if preprocessing is not None else {}),
        **records_to_json([rec for rec, _ in layers], [rec for rec, _ in floats]),
        "promised_model_bits": promised_bits,
        "float_model_bits": space.cost.float_model_bits(),
    }
    tensors = encode_tensors(layers, floats)
    file_bytes, header_bytes = write_mbits(path, tensors, manifest)
    result = ExportResult(
        path=str(path), promised_bytes=promised_bits / 8, file_bytes=file_bytes, header_bytes=header_bytes,
        quantized_weight_bytes=sum(rec.stored_bytes for rec, _ in layers),
        float_quantized_bytes=space.cost.float_quantized_bits() // 8,
        float_model_bytes=space.cost.float_model_bits() / 8,
        file_bound_bytes=(promised_bits + space.cost.file_overhead_bits) / 8)
    log.info("exported %s: %d bytes, promised %.0f", path, file_bytes, result.promised_bytes)
    if file_bytes * 8 > promised_bits + space.cost.file_overhead_bits:
        # only a model recipe longer than the header bound's allowance gets here
        log.warning("%s is %d bytes, more than the size bound of %.0f bytes (model bits plus header bound) that "
                    "size targets rely on: its header of %d bytes exceeds the bound", path, file_bytes,
                    result.file_bound_bytes, header_bytes)
    return result

