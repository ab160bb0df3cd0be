"""Writing a ``.mbits`` file: the blobs of a model's weights, the manifest's tables, the atomic write, the header bound."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from ..quant import HALF_BITS, INT_BITS, channels_first, weight_codes
from ..runfiles import atomic_write
from .group_codes import pack_group_bits
from .layout import (BLOBS, CHECKSUM_KEY, FLOAT_FIELDS, FORMAT_VERSION, GROUPED_ROW_BITS, LAYER_FIELDS, METADATA_KEY,
                     RECIPE_ALLOWANCE_BYTES, SCALE_DTYPE, FLOAT16_MAX, checksum)
from .pack import pack_codes
from .records import FloatRecord, LayerRecord

__all__ = ["encode_tensors", "write_mbits", "float_records", "header_bytes_bound", "records_to_json"]


def _encode_layer(rec: LayerRecord, w: torch.Tensor, parts: dict[str, list[torch.Tensor]]) -> None:
    """Append one quantized weight's parts (see the module doc) to ``parts``."""
    if not rec.grouped:
        if rec.bits in INT_BITS:
            # on w's device and in the layout of the forward pass (output channels first)
            codes, scale = weight_codes(channels_first(w, rec.channel_dim), rec.bits)
            parts["codes"].append(pack_codes(codes, rec.bits))
            parts["scales"].append(scale.to("cpu", torch.float16).reshape(-1))  # exact: scales are float16 values
        elif rec.bits == HALF_BITS:
            parts["half"].append(w.to("cpu", torch.float16).reshape(-1))
        else:
            parts["float"].append(w.to("cpu", torch.float32).reshape(-1))
        return
    wc = channels_first(w, rec.channel_dim)  # (C, ...)
    channel_bits = torch.from_numpy(rec.channel_bits).to(w.device)  # (C,)
    for b in rec.bits_channels:  # ascending: one run per distinct bitwidth
        rows = wc.index_select(0, (channel_bits == b).nonzero().flatten())  # (c_b, ...), channel order
        if b in INT_BITS:
            # per-channel quantizer: the rows of the whole tensor quantized at b
            codes, scale = weight_codes(rows, b)
            parts["codes"].append(pack_codes(codes, b))
            parts["scales"].append(scale.to("cpu", torch.float16).reshape(-1))
        elif b == HALF_BITS:
            parts["half"].append(rows.to("cpu", torch.float16).reshape(-1))
        else:
            parts["float"].append(rows.to("cpu", torch.float32).reshape(-1))
    parts["group_bits"].append(pack_group_bits(rec.group_bits))


def encode_tensors(layers: list[tuple[LayerRecord, torch.Tensor]],
                   floats: list[tuple[FloatRecord, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Build the blobs from the quantized weights and the float tensors.

    Args:
        layers: (record, float weight) pairs; 1..8-bit weights (or structures) are quantized here with
            :func:`mixbits.quant.weight_codes`, exactly as the fake-quantized model does.
        floats: (record, tensor) pairs, stored as float32.

    Returns:
        {blob name: 1-D tensor on the CPU}, empty blobs left out.

    Raises:
        ValueError: a quantized layer with NaN or infinite weights, or with 16-bit weights beyond float16's range;
            a weight whose shape is not its record's; a float tensor holding NaN, infinities its record does
            not declare (``FloatRecord.infinite``), or BatchNorm statistics that are not finite or a negative
            variance. The reader rejects all of these, so a file never holds them.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in BLOBS}
    for rec, w in layers:
        w = w.detach()
        if tuple(w.shape) != rec.shape:
            raise ValueError(f"layer {rec.name!r}: weight of shape {tuple(w.shape)}, its record says {rec.shape}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"layer {rec.name!r} has NaN or infinite weights: nothing sensible to export")
        halves = len(parts["half"])
        _encode_layer(rec, w, parts)
        if not all(bool(torch.isfinite(h).all()) for h in parts["half"][halves:]):
            raise ValueError(f"layer {rec.name!r} has weights beyond float16's range (+-{FLOAT16_MAX:g}) at 16 bits: "
                             f"give it 32 bits (pins={{{rec.name!r}: 32}})")
    for rec, t in floats:
        t = t.detach().to("cpu", torch.float32).reshape(-1)
        _check_float(rec, t)
        parts["float"].append(t)
    return {name: torch.cat(ts).contiguous() for name, ts in parts.items() if ts}


def _check_float(rec: FloatRecord, t: torch.Tensor) -> None:
    """Raise ValueError for values of a float tensor that the reader refuses (see :func:`encode_tensors`)."""
    if bool(torch.isnan(t).any()):
        raise ValueError(f"float tensor {rec.key!r} holds NaN: nothing sensible to export")
    if rec.bn_stat and not bool(torch.isfinite(t).all()):
        raise ValueError(f"BatchNorm statistics {rec.key!r} are not finite: recalibrate the model first")
    if rec.bn_stat and rec.key.endswith("running_var") and bool((t < 0).any()):
        raise ValueError(f"BatchNorm variance {rec.key!r} has negative values: recalibrate the model first")
    if not rec.infinite and bool(torch.isinf(t).any()):
        raise ValueError(f"float tensor {rec.key!r} holds infinities its record does not declare "
                         f"(FloatRecord(infinite=True), as float_records sets it)")


def write_mbits(path: str | Path, tensors: Mapping[str, torch.Tensor],
                manifest: Mapping[str, Any]) -> tuple[int, int]:
    """Write the file atomically (temporary file, then rename).

    Returns:
        (file size, header size), in bytes.
    """
    from safetensors.torch import save

    text = json.dumps(dict(manifest), separators=(",", ":"))
    data = save(dict(tensors), metadata={METADATA_KEY: text, CHECKSUM_KEY: checksum(text, tensors)})

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, writer)
    return len(data), 8 + int.from_bytes(data[:8], "little")


def float_records(model: torch.nn.Module, skip: set[int]) -> list[tuple[FloatRecord, torch.Tensor]]:
    """The floating tensors of ``model``'s state dict but those in ``skip`` (by id), once each under all their keys.

    Integer buffers (``num_batches_tracked``) and non-persistent buffers are not stored. A tensor holding
    +-inf (an attention mask kept as a buffer) is marked ``infinite``: the manifest lists it in
    ``float_infinite``, the only place a file may hold infinities.
    """
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) in skip or not t.is_floating_point():
            continue
        groups.setdefault(id(t), (t, []))[1].append(key)
    return [(FloatRecord(key=keys[0], shape=tuple(t.shape), aliases=tuple(keys[1:]),
                         infinite=_has_inf(t)), t) for t, keys in groups.values()]


def _has_inf(t: torch.Tensor) -> bool:
    """Whether a tensor holds +-inf (False on the meta device, which has no values)."""
    return t.device.type != "meta" and bool(torch.isinf(t.detach()).any())


def header_bytes_bound(layers: list[LayerRecord] | tuple[LayerRecord, ...],
                       floats: list[FloatRecord] | tuple[FloatRecord, ...], float_model_bits: int) -> int:
    """An upper bound on the header of a file of these weights at any bits, in bytes.

    The header (length prefix, safetensors tensor table, manifest and checksum) is built as
    :func:`write_mbits` builds it, with every number at its widest: two-digit bits, the
    float model's size for the promise, group sizes with as many digits as the channel count,
    and every tensor size and offset written with one more digit than the float model's byte
    count. The ``group_bits`` tensor is counted when a layer has structures (whether it does
    depends on ``group_size``, not on the bits). The model recipe, the input shape and the
    mixbits version get :data:`RECIPE_ALLOWANCE_BYTES` together.

    Args:
        layers: the quantized weights (their ``bits`` are ignored; their ``group_size`` counts).
        floats: the tensors kept in float32.
        float_model_bits: size of the whole float32 model, bits.
    """
    widest = [LayerRecord(name=r.name, aliases=r.aliases, kind=r.kind, shape=r.shape, bits=32, keys=r.keys,
                          channel_dim=r.channel_dim, group_size=r.group_size) for r in layers]
    tables = records_to_json(widest, list(floats))
    tables["layers"] = [[r.name, r.kind, list(r.shape), 32] + ([list(r.aliases)] if r.aliases else [])
                        for r in widest]  # a grouped layer's row holds 0: 32 is wider
    if "layer_groups" in tables:
        tables["layer_groups"] = {r.name: 10 ** len(str(r.num_channels)) - 1 for r in widest if r.grouped}
    manifest = {"format_version": FORMAT_VERSION, "mixbits_version": "", "scale_dtype": SCALE_DTYPE,
                "bit_order": "little", "model": None, "input_shape": None, **tables,
                "promised_model_bits": float_model_bits, "float_model_bits": float_model_bits}
    text = json.dumps(manifest, separators=(",", ":"))
    big = 10 * (float_model_bits // 8 + len(layers) + 1)  # more than any element count or byte offset
    table: dict[str, Any] = {"__metadata__": {METADATA_KEY: text, CHECKSUM_KEY: "0" * 64}}
    blobs = [name for name in BLOBS if name != "group_bits" or any(r.grouped for r in widest)]
    table.update({name: {"dtype": "F32", "shape": [big], "data_offsets": [big, big]} for name in blobs})
    header = len(json.dumps(table, separators=(",", ":")).encode("utf-8"))
    return 8 + header + 7 + RECIPE_ALLOWANCE_BYTES  # length prefix, table, padding to 8 bytes, recipe



def records_to_json(layers: tuple[LayerRecord, ...] | list[LayerRecord],
                    floats: tuple[FloatRecord, ...] | list[FloatRecord]) -> dict[str, Any]:
    """The manifest's tables: one row per layer, one row per run of same-shaped tensors of a module.

    Rows are lists, not objects, and the floats of one module share its name and shape
    (a BatchNorm is one row, not four): the header then stays a few KiB for a ResNet. A layer
    with structures has bits 0 in its row and its group size in ``layer_groups``; its
    per-structure bits go to the ``group_bits`` tensor (:func:`encode_tensors`).
    """
    groups: list[list[Any]] = []
    for rec in floats:
        module, _, name = rec.key.rpartition(".")
        if groups and groups[-1][0] == module and groups[-1][2] == list(rec.shape):
            groups[-1][1].append(name)
        else:
            groups.append([module, [name], list(rec.shape)])
    out: dict[str, Any] = {
        "layer_fields": list(LAYER_FIELDS),
        "layers": [[r.name, r.kind, list(r.shape), GROUPED_ROW_BITS if r.grouped else r.bits]
                   + ([list(r.aliases)] if r.aliases else []) for r in layers],
        "float_fields": list(FLOAT_FIELDS),
        "floats": groups,
    }
    aliases = {rec.key: list(rec.aliases) for rec in floats if rec.aliases}
    if aliases:
        out["float_aliases"] = aliases
    keys = {r.name: list(r.state_keys) for r in layers if not r.default_keys}
    if keys:
        out["layer_keys"] = keys
    dims = {r.name: r.channel_dim for r in layers if r.channel_dim}
    if dims:
        out["layer_channel_dims"] = dims
    sizes = {r.name: r.group_size for r in layers if r.grouped}
    if sizes:
        out["layer_groups"] = sizes
    infinite = [rec.key for rec in floats if rec.infinite]
    if infinite:
        out["float_infinite"] = infinite
    return out

