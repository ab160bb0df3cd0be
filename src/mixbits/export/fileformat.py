"""The ``.mbits`` file: a safetensors file whose metadata holds a JSON manifest.

Format version 4. Version 4 is version 3 with the four-level 2-bit quantizer (codes
``-2..1``, levels ``(c + 1/2) * scale``; see :mod:`mixbits.quant`); version 2 and 3
files are read too unless they hold a 2-bit layer, whose codes meant the ternary levels
of older releases (a clear error asks to export it again). A version 2 file is a version
3 file without structures, so it has no ``layer_groups`` and no ``group_bits``. The
safetensors metadata has two keys: ``"mixbits"``, the manifest (compact JSON), and
``"mixbits_sha256"``, one SHA-256 over the manifest text and every tensor (name,
dtype, shape and bytes, in the order below)::

    {"format_version": 4, "mixbits_version": "0.1.0", "scale_dtype": "float16", "bit_order": "little",
     "model": {"zoo": "digits_cnn", "kwargs": {...}},      # or {"import": "pkg.mod:fn", "kwargs": ...}, or null
     "input_shape": [1, 8, 8],                             # or null
     "layer_fields": ["name", "kind", "shape", "bits", "aliases"],
     "layers": [["features.0", "Conv2d", [32, 1, 3, 3], 2], ...],   # aliases only for a shared weight
     "float_fields": ["module", "names", "shape"],
     "floats": [["features.1", ["weight", "bias", "running_mean", "running_var"], [32]], ...],
     "float_aliases": {"head.bias": ["tied.bias"]},       # only when a float tensor is shared
     "layer_keys": {"lstm.weight_ih_l0": ["lstm.weight_ih_l0"]},  # only when not "<name>.weight" per name
     "layer_channel_dims": {"h.0.attn.c_attn": 1},       # only for layers whose scales are not along dim 0
     "layer_groups": {"features.3": 4},                  # only for layers with bits per structure
     "promised_model_bits": 97760, "float_model_bits": 1881408}

and at most five tensors, each the concatenation of its parts in manifest order:

* ``codes``      uint8: every 1..8-bit layer's codes packed at exactly its bits
  (:mod:`mixbits.export.pack`), each layer (each run of a layer with structures, below)
  starting on a byte boundary;
* ``scales``     float16: every 1..8-bit layer's per-output-channel scales;
* ``half``       float16: every 16-bit layer's weight;
* ``float``      float32: every 32-bit layer's weight, then every ``floats`` entry
  (biases, norms, running statistics, layers kept in float);
* ``group_bits`` uint8: the bitwidth of every structure, below (only when a layer has structures).

A layer's codes and scales are those of its weight with the output-channel
dimension (``layer_channel_dims``, default 0) moved first: a Hugging Face
``Conv1D`` weight of shape (in, out) stores the codes of its (out, in) transpose
and ``out`` scales. The manifest's shape stays the state-dict shape.

Structures. A layer named in ``layer_groups`` with group size ``g`` (an integer,
1 <= g < its output channels) takes one bitwidth per *structure*: per run of ``g``
consecutive output channels (along its channel dimension; the last run may be
shorter), ``G = ceil(C / g) >= 2`` structures. Its row has bits ``0``. Its bitwidths
are in ``group_bits``: for every such layer in manifest order, ``ceil(G / 2)`` bytes of
4-bit codes, one per structure in order, low nibble first (structure ``2k`` is bits
0..3 of the layer's byte ``k``, structure ``2k + 1`` bits 4..7; an odd ``G`` leaves a zero
high nibble). A code is the index of the bitwidth in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32).
Its data, with channels first (shape ``(C, ...)``):

* for each distinct bitwidth ``b`` in 1..8 its structures use, in ascending order: the
  codes of all channels whose structure has ``b``, in channel order, packed at ``b`` bits
  as one run in ``codes`` (starting on a byte boundary: at most 7 padding bits per
  distinct bitwidth), and their scales, in channel order, appended to ``scales``;
* the channels at 16 bits, in channel order, in ``half``; those at 32 bits in ``float``
  (channels-first layout, before the ``floats`` entries).

Each channel's values equal those of the whole tensor quantized at its structure's bits
(quantization is per output channel), so the file holds exactly what the cost model counts.

One tensor per kind keeps the safetensors tensor table constant in size, and the
tabular manifest keeps the header at about 1.5 KB for the default CNN and 3 KB for
a ResNet-20. Integer buffers (``num_batches_tracked``) are not
stored, as the cost model does not count them. Reading never unpickles: the
data are raw little-endian arrays and the manifest is JSON. The checksum is
checked before the manifest is parsed, and every field is checked for type and
bounds before anything is built: any damage is one :class:`MbitsFormatError`
with a short message that names the file. (The checksum catches damage, not a
forger who recomputes it: such a file is a valid file of another model.)
"""

from __future__ import annotations

import hashlib
import json
import os
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np
import torch

from ..granularity import Structures
from ..quant import (FLOAT_BITS, HALF_BITS, INT_BITS, VALID_BITS, channels_back, channels_first, dequantize,
                     weight_codes)
from ..runfiles import atomic_write
from .pack import pack_codes, packed_nbytes, unpack_codes

__all__ = ["FORMAT_VERSION", "READ_VERSIONS", "MbitsFormatError", "LayerRecord", "FloatRecord", "MbitsFile",
           "write_mbits", "read_mbits", "decode_state_dict", "records_to_json", "weight_key", "checksum",
           "float_records", "header_bytes_bound", "RECIPE_ALLOWANCE_BYTES", "pack_group_bits", "unpack_group_bits"]

FORMAT_VERSION = 4
READ_VERSIONS = (2, 3, 4)  # version 2 is version 3 without structures; 3 is 4 with a ternary 2-bit quantizer
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

Bits = Union[int, tuple[int, ...]]  # one layer's bits: an int, or one per structure


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


def weight_key(module_name: str) -> str:
    """State-dict key of a layer's weight (a bare ``weight`` for the root module)."""
    return f"{module_name}.weight" if module_name else "weight"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class LayerRecord(Structures):
    """One quantized weight as stored: its name(s), shape, bits and state-dict keys.

    Attributes:
        name, aliases, kind, shape: as :class:`mixbits.cost.LayerInfo`.
        bits: an int, or for a layer with structures one int per structure (a tuple). An int
            given for a layer with structures applies to every structure, and a sequence is
            made a tuple: the record always holds the canonical form.
        keys: state-dict keys; default :func:`weight_key` of the name and each alias.
        channel_dim: the dimension of ``shape`` with one scale per index.
        group_size: output channels per structure (runs along ``channel_dim``, the last one possibly
            shorter); 0 when the whole weight takes one bitwidth. Below the channel count, so a layer
            with structures has two or more.

    Raises:
        ValueError: a group size outside 0 or 1..channels-1, or per-structure bits of the wrong length.
    """

    name: str
    aliases: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    bits: Bits
    keys: tuple[str, ...] = ()
    channel_dim: int = 0
    group_size: int = 0

    def __post_init__(self) -> None:
        self.check_structures()
        bits = self.bits
        if _is_int(bits):
            canonical: Bits = (int(bits),) * self.num_groups if self.grouped else int(bits)
        else:
            per = tuple(int(b) for b in bits)
            if len(per) != self.num_groups:
                raise ValueError(f"layer {self.name!r} has {self.num_groups} structure(s) but {len(per)} bits "
                                 f"were given")
            canonical = per if self.grouped else per[0]
        object.__setattr__(self, "bits", canonical)

    @property
    def codes_shape(self) -> tuple[int, ...]:
        """The shape the codes are stored in: ``shape`` with ``channel_dim`` moved first."""
        d = self.channel_dim
        return (self.shape[d],) + self.shape[:d] + self.shape[d + 1:]

    @property
    def group_bits(self) -> tuple[int, ...]:
        """The bits of every structure, shape (num_groups,) (one element for a layer without structures)."""
        return self.bits if isinstance(self.bits, tuple) else (self.bits,)

    @property
    def channel_bits(self) -> np.ndarray:
        """The bits of every output channel, shape (C,), int64."""
        return np.repeat(np.asarray(self.group_bits, dtype=np.int64), self.group_channels)

    @property
    def bits_channels(self) -> dict[int, int]:
        """{bits: output channels at those bits}, in ascending bits: the runs the file stores."""
        counts: dict[int, int] = {}
        for b, c in zip(self.group_bits, self.group_channels):
            counts[b] = counts.get(b, 0) + c
        return dict(sorted(counts.items()))

    @property
    def index_bytes(self) -> int:
        """Bytes of this layer's 4-bit structure codes in ``group_bits`` (0 without structures)."""
        return (self.num_groups + 1) // 2 if self.grouped else 0

    @property
    def state_keys(self) -> tuple[str, ...]:
        return self.keys or tuple(weight_key(n) for n in (self.name,) + self.aliases)

    @property
    def default_keys(self) -> bool:
        return self.state_keys == tuple(weight_key(n) for n in (self.name,) + self.aliases)

    @property
    def num_weights(self) -> int:
        return _numel(self.shape)

    @property
    def weights_per_channel(self) -> int:
        return self.num_weights // self.num_channels if self.num_channels else 0

    @property
    def average_bits(self) -> float:
        """Code bits per weight (scales and structure codes not included): the weight-weighted mean bitwidth."""
        per = self.weights_per_channel
        total = sum(b * c * per for b, c in self.bits_channels.items())
        return total / self.num_weights if self.num_weights else 0.0

    @property
    def stored_bytes(self) -> int:
        """Bytes this weight takes in the file: codes and scales or half/float values, and structure codes."""
        return sum(_run_elements(self, b, c)[blob] * _ITEM_BYTES[blob]
                   for b, c in self.bits_channels.items() for blob in ("codes", "scales", "half", "float")
                   ) + self.index_bytes


_ITEM_BYTES = {"codes": 1, "scales": 2, "half": 2, "float": 4, "group_bits": 1}


def _run_elements(rec: LayerRecord, bits: int, channels: int) -> dict[str, int]:
    """Elements of each blob that ``channels`` output channels of ``rec`` at ``bits`` take (one run)."""
    n = channels * rec.weights_per_channel
    if bits in INT_BITS:
        return {"codes": packed_nbytes(n, bits), "scales": channels, "half": 0, "float": 0}
    if bits == HALF_BITS:
        return {"codes": 0, "scales": 0, "half": n, "float": 0}
    return {"codes": 0, "scales": 0, "half": 0, "float": n}


def pack_group_bits(bits: Sequence[int]) -> torch.Tensor:
    """The 4-bit codes of per-structure bitwidths, low nibble first.

    Args:
        bits: bitwidths, each in ``quant.VALID_BITS``, shape (G,).

    Returns:
        uint8 tensor, shape (ceil(G / 2),); an odd ``G`` leaves the last high nibble zero.

    Raises:
        ValueError: a bitwidth that is not supported.
    """
    bad = [b for b in bits if b not in VALID_BITS]
    if bad:
        raise ValueError(f"unsupported bitwidths {bad[:5]} in per-structure bits")
    codes = np.array([VALID_BITS.index(int(b)) for b in bits], dtype=np.uint8)  # (G,)
    if codes.size % 2:
        codes = np.append(codes, np.uint8(0))
    return torch.from_numpy((codes[0::2] | (codes[1::2] << 4)).astype(np.uint8))  # (ceil(G/2),)


def unpack_group_bits(data: torch.Tensor, count: int) -> tuple[int, ...]:
    """Inverse of :func:`pack_group_bits`: ``count`` bitwidths from ``ceil(count / 2)`` bytes.

    Raises:
        ValueError: a byte count that does not fit, a code above 9, or a non-zero padding nibble.
    """
    raw = data.detach().to("cpu").contiguous().numpy()
    if raw.dtype != np.uint8 or raw.shape != ((count + 1) // 2,):
        raise ValueError(f"{count} structure codes need {(count + 1) // 2} bytes, got {raw.size}")
    codes = np.stack([raw & 15, raw >> 4], axis=1).reshape(-1)  # (2 * ceil(count/2),), low nibble first
    if codes.size > count and codes[count] != 0:
        raise ValueError("the padding nibble after the last structure code is not zero")
    codes = codes[:count]
    if codes.size and int(codes.max()) >= len(VALID_BITS):
        raise ValueError(f"structure code {int(codes.max())} names no bitwidth (codes are 0..{len(VALID_BITS) - 1})")
    table = np.asarray(VALID_BITS, dtype=np.int64)
    return tuple(int(b) for b in table[codes])


@dataclass(frozen=True)
class FloatRecord:
    """A tensor kept in float32: its state-dict key, shape and the other keys that share it."""

    key: str
    shape: tuple[int, ...]
    aliases: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return _numel(self.shape)


@dataclass(frozen=True)
class MbitsFile:
    """A validated ``.mbits`` file in memory.

    Attributes:
        path: where it was read from.
        manifest: the parsed JSON manifest.
        layers: the quantized weights, in file order (per-structure bits decoded from ``group_bits``).
        floats: the float32 tensors, in file order.
        blobs: {"codes" | "scales" | "half" | "float" | "group_bits": 1-D tensor}.
        file_bytes: size on disk.
        header_bytes: safetensors header (length prefix, tensor table, manifest).
    """

    path: str
    manifest: dict[str, Any]
    layers: tuple[LayerRecord, ...]
    floats: tuple[FloatRecord, ...]
    blobs: dict[str, torch.Tensor]
    file_bytes: int
    header_bytes: int


def _expected_blob_sizes(layers: tuple[LayerRecord, ...], floats: tuple[FloatRecord, ...]) -> dict[str, int]:
    """Number of elements of each blob implied by the records."""
    sizes = {name: 0 for name in BLOBS}
    for layer in layers:
        for b, c in layer.bits_channels.items():
            for blob, n in _run_elements(layer, b, c).items():
                sizes[blob] += n
        sizes["group_bits"] += layer.index_bytes
    sizes["float"] += sum(f.numel for f in floats)
    return sizes


def checksum(manifest_text: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of the manifest text, then of each tensor's name, dtype, shape and bytes in blob order."""
    h = hashlib.sha256(manifest_text.encode("utf-8"))
    for name in BLOBS:
        if name in tensors:
            t = tensors[name].contiguous()
            h.update(f"\0{name}\0{t.dtype}\0{list(t.shape)}\0".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
        ValueError: a quantized layer with NaN or infinite weights, or a weight whose shape is not its record's.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in BLOBS}
    for rec, w in layers:
        w = w.detach()
        if tuple(w.shape) != rec.shape:
            raise ValueError(f"layer {rec.name!r}: weight of shape {tuple(w.shape)}, its record says {rec.shape}")
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"layer {rec.name!r} has NaN or infinite weights: nothing sensible to export")
        _encode_layer(rec, w, parts)
    for _, t in floats:
        parts["float"].append(t.detach().to("cpu", torch.float32).reshape(-1))
    return {name: torch.cat(ts).contiguous() for name, ts in parts.items() if ts}


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

    Integer buffers (``num_batches_tracked``) and non-persistent buffers are not stored.
    """
    groups: dict[int, tuple[torch.Tensor, list[str]]] = {}
    for key, t in model.state_dict(keep_vars=True).items():
        if id(t) in skip or not t.is_floating_point():
            continue
        groups.setdefault(id(t), (t, []))[1].append(key)
    return [(FloatRecord(key=keys[0], shape=tuple(t.shape), aliases=tuple(keys[1:])), t) for t, keys in groups.values()]


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


def _corrupt(path: str, why: str) -> MbitsFormatError:
    return MbitsFormatError(f"{path_repr(path)} is not a valid .mbits file: {why}")


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
    return out


def _shape(value: Any, path: str, what: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    ok = isinstance(value, list) and (bool(value) or allow_empty) and len(value) <= MAX_DIMS and all(
        isinstance(s, int) and not isinstance(s, bool) and (0 if allow_empty else 1) <= s <= MAX_DIM for s in value)
    if not ok:
        raise _corrupt(path, f"{short_repr(what)} has a bad shape {short_repr(value)} in the manifest")
    return tuple(value)


def _name(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise _corrupt(path, f"bad {what} {short_repr(value)} in the manifest")
    return value


def _names(value: Any, path: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and 0 < len(s) <= MAX_NAME_CHARS for s in value):
        raise _corrupt(path, f"{short_repr(what)} has bad names {short_repr(value)} in the manifest")
    return tuple(value)


def _group_size(name: str, value: Any, channels: int, path: str) -> int:
    if type(value) is not int or not 1 <= value < channels:
        raise _corrupt(path, f"layer {short_repr(name)} has a bad group size {short_repr(value)} in layer_groups "
                             f"(want an integer in 1..{channels - 1}: fewer channels than its {channels})")
    return value


def _parse_records(manifest: dict[str, Any], path: str, group_blob: torch.Tensor | None = None
                   ) -> tuple[tuple[LayerRecord, ...], tuple[FloatRecord, ...]]:
    """The layer and float records of a checked manifest, every field validated.

    Args:
        manifest: the parsed manifest (its scalar fields already checked by :func:`_check_fields`).
        path: the file, for messages.
        group_blob: the file's ``group_bits`` tensor (absent: empty), which holds the bits of the
            layers named in ``layer_groups``.

    Raises:
        MbitsFormatError: any field of the wrong type, out of bounds or inconsistent; a ``group_bits``
            tensor of the wrong size, a structure code above 9 or a non-zero padding nibble.
    """
    raw_layers, raw_floats = manifest.get("layers"), manifest.get("floats")
    if not isinstance(raw_layers, list) or not isinstance(raw_floats, list):
        raise _corrupt(path, "the manifest lacks its 'layers' or 'floats' table")
    if manifest.get("layer_fields") != list(LAYER_FIELDS) or manifest.get("float_fields") != list(FLOAT_FIELDS):
        raise _corrupt(path, f"the manifest's table columns are not {LAYER_FIELDS} and {FLOAT_FIELDS}")
    layer_keys = manifest.get("layer_keys", {})
    if not isinstance(layer_keys, dict):
        raise _corrupt(path, "bad layer_keys in the manifest")
    channel_dims = manifest.get("layer_channel_dims", {})  # absent in files written before it existed
    if not isinstance(channel_dims, dict):
        raise _corrupt(path, "bad layer_channel_dims in the manifest")
    layer_groups = manifest.get("layer_groups", {})
    if not isinstance(layer_groups, dict):
        raise _corrupt(path, "bad layer_groups in the manifest")
    if layer_groups and manifest.get("format_version") == 2:
        raise _corrupt(path, "a version 2 manifest with layer_groups (structures are new in version 3)")
    # the group codes: validated as a tensor first, then decoded per layer
    if group_blob is None:
        group_blob = torch.zeros(0, dtype=torch.uint8)
    if group_blob.dtype != torch.uint8 or group_blob.dim() != 1:
        raise _corrupt(path, f"tensor 'group_bits' holds {group_blob.dtype} values of shape "
                             f"{short_repr(list(group_blob.shape))}, not a 1-D uint8 tensor")
    rows = []  # (name, kind, shape, bits, aliases, cdim, group size, structures), checked
    for row in raw_layers:
        if not isinstance(row, list) or len(row) not in (4, 5):
            raise _corrupt(path, f"bad layer row {short_repr(row)} in the manifest")
        name, kind, shape, bits = _name(row[0], path, "layer name"), _name(row[1], path, "layer kind"), row[2], row[3]
        grouped = name in layer_groups
        if isinstance(bits, bool) or not isinstance(bits, int) or (
                bits != GROUPED_ROW_BITS if grouped else bits not in VALID_BITS):
            raise _corrupt(path, f"layer {short_repr(name)} has bits {short_repr(bits)} in its row, but a layer with "
                                 f"structures (named in layer_groups) has {GROUPED_ROW_BITS} there" if grouped else
                           f"layer {short_repr(name)} has unsupported bits {short_repr(bits)}")
        shape = _shape(shape, path, name)
        cdim = channel_dims.get(name, 0)
        if type(cdim) is not int or not 0 <= cdim < len(shape):
            raise _corrupt(path, f"layer {short_repr(name)} has a bad channel dimension {short_repr(cdim)} for "
                                 f"shape {short_repr(list(shape))}")
        group_size = _group_size(name, layer_groups[name], shape[cdim], path) if grouped else 0
        count = -(-shape[cdim] // group_size) if grouped else 1  # ceil, exact for any size
        rows.append((name, kind, shape, bits, _names(row[4], path, name) if len(row) == 5 else (), cdim, group_size,
                     count))
    # the structure codes: the tensor's size first (no allocation follows from a crafted count), then per layer
    need = sum((count + 1) // 2 for *_, group_size, count in rows if group_size)
    if group_blob.numel() != need:
        raise _corrupt(path, f"tensor 'group_bits' holds {group_blob.numel()} uint8 values, the manifest needs {need}")
    group_cursor = 0
    layers = []
    for name, kind, shape, bits, layer_aliases, cdim, group_size, count in rows:
        if group_size:
            chunk = group_blob[group_cursor:group_cursor + (count + 1) // 2]
            group_cursor += (count + 1) // 2
            try:
                bits = unpack_group_bits(chunk, count)
            except ValueError as exc:
                raise _corrupt(path, f"layer {short_repr(name)}: {str(exc)[:100]}") from None
        layers.append(LayerRecord(name=name, aliases=layer_aliases, kind=kind, shape=shape, bits=bits,
                                  keys=_names(layer_keys.get(name, []), path, name), channel_dim=cdim,
                                  group_size=group_size))
    names = {rec.name for rec in layers}
    for what, table in (("layer_channel_dims", channel_dims), ("layer_groups", layer_groups)):
        unknown = set(table) - names
        if unknown:
            raise _corrupt(path, f"{what} names {short_repr(sorted(unknown))}, which are not layers")
    aliases = manifest.get("float_aliases", {})
    if not isinstance(aliases, dict):
        raise _corrupt(path, "bad float_aliases in the manifest")
    floats = []
    for row in raw_floats:
        if not isinstance(row, list) or len(row) != 3:
            raise _corrupt(path, f"bad float row {short_repr(row)} in the manifest")
        module = _name(row[0], path, "module name")
        names_, shape = _names(row[1], path, module), _shape(row[2], path, module, allow_empty=True)
        for name in names_:
            key = f"{module}.{name}" if module else name
            floats.append(FloatRecord(key=key, shape=shape, aliases=_names(aliases.get(key, []), path, key)))
    keys = [weight_key(n) for rec in layers for n in (rec.name,) + rec.aliases]
    keys += [k for rec in floats for k in (rec.key,) + rec.aliases]
    if len(set(keys)) != len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1}) if len(keys) < 5000 else ["..."]
        raise _corrupt(path, f"the manifest names {short_repr(twice)} twice")
    return tuple(layers), tuple(floats)


def _check_fields(manifest: dict[str, Any], path: str) -> None:
    """Types and bounds of the manifest's scalar fields, the model recipe and the input shape."""
    version = manifest.get("format_version")
    if type(version) is not int or version not in READ_VERSIONS:  # True and 1.0 are not versions
        newer = type(version) is int and version > FORMAT_VERSION
        older = type(version) is int and 0 < version < min(READ_VERSIONS)
        raise MbitsFormatError(
            f"{path_repr(path)} has format version {short_repr(version)}, but this mixbits reads versions "
            f"{', '.join(str(v) for v in READ_VERSIONS[:-1])} and {READ_VERSIONS[-1]}" + ("; upgrade mixbits to read it" if newer else "")
            + ("; export it again with this mixbits (mixbits export RUN_FOLDER)" if older else ""))
    if manifest.get("scale_dtype") != SCALE_DTYPE or manifest.get("bit_order") != "little":
        raise _corrupt(path, f"unsupported scale dtype {short_repr(manifest.get('scale_dtype'))} or bit order "
                             f"{short_repr(manifest.get('bit_order'))} (version {version} stores float16 "
                             f"scales, little bit order)")
    for key in ("promised_model_bits", "float_model_bits"):
        v = manifest.get(key)
        if v is not None and (type(v) is not int or not 0 <= v <= 1 << 62):
            raise _corrupt(path, f"bad {key} {short_repr(v)} in the manifest")
    if not isinstance(manifest.get("mixbits_version", ""), str):
        raise _corrupt(path, "bad mixbits_version in the manifest")
    shape = manifest.get("input_shape")
    if shape is not None and (len(_shape(shape, path, "input_shape")) > 4 or _numel(tuple(shape)) > 1 << 24):
        raise _corrupt(path, f"input_shape {short_repr(shape)} is larger than one sample can be")
    recipe = manifest.get("model")
    if recipe is None:
        return
    kwargs = recipe.get("kwargs", {}) if isinstance(recipe, dict) else None
    ok = (isinstance(recipe, dict) and set(recipe) in ({"zoo", "kwargs"}, {"import", "kwargs"}, {"zoo"}, {"import"})
          and isinstance(recipe.get("zoo", recipe.get("import")), str)
          and 0 < len(recipe.get("zoo", recipe.get("import"))) <= 200
          and isinstance(kwargs, dict) and len(kwargs) <= 64 and all(
              isinstance(k, str) and len(k) <= 64 and _plain_scalar(v) for k, v in kwargs.items()))
    if not ok:
        raise _corrupt(path, f"malformed model recipe {short_repr(recipe)} (want {{'zoo' or 'import': NAME, "
                             f"'kwargs': {{name: number, string or bool}}}})")


def _plain_scalar(v: Any) -> bool:
    if isinstance(v, bool) or v is None:
        return True
    if isinstance(v, int):
        return abs(v) <= 1 << 31
    if isinstance(v, float):
        return abs(v) <= 1e6 or v == 0.0
    return isinstance(v, str) and len(v) <= 200


def _json(raw: bytes | str, path: str, what: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit integer
        raise _corrupt(path, f"{what} is not valid JSON ({str(exc)[:100]})") from None


def read_mbits(path: str | Path) -> MbitsFile:
    """Read and validate a ``.mbits`` file (version 2, 3 or 4) without building any model and without unpickling.

    The checksum is verified before the manifest is parsed; the manifest is then checked
    field by field (types, bounds, consistency with the tensors), and the per-structure
    bits of layers with structures are decoded from ``group_bits``.

    Raises:
        FileNotFoundError: no such file.
        MbitsFormatError: (a ValueError) a truncated, corrupted or inconsistent file, a safetensors
            file that is not a mixbits export, or a format version this mixbits does not read.
    """
    from safetensors.torch import load

    p = Path(path)
    path = str(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file {path_repr(path)} does not exist")
    data = p.read_bytes()
    header_len = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < header_len <= min(len(data) - 8, MAX_HEADER_BYTES):
        raise _corrupt(path, f"truncated or corrupted (a header of {header_len} bytes in a file of {len(data)})")
    header = _json(data[8:8 + header_len], path, "the safetensors header")
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise _corrupt(path, "a safetensors file without a mixbits manifest (was it written by mixbits export?)")
    text, digest = meta[METADATA_KEY], meta.get(CHECKSUM_KEY)
    if not isinstance(text, str):
        raise _corrupt(path, "the manifest is not a string")
    try:
        tensors = load(data)
    except Exception as exc:  # SafetensorError: bad length prefix, broken header, truncated data
        raise _corrupt(path, f"truncated or corrupted ({str(exc)[:100]})") from None
    unknown = sorted(set(tensors) - set(BLOBS))
    if unknown:
        raise _corrupt(path, f"unexpected tensors {short_repr(unknown)}")
    if digest is None:
        version = _unchecked_version(text)
        if version is not None and version < min(READ_VERSIONS):
            _check_fields({"format_version": version}, path)
        raise _corrupt(path, f"it lacks its checksum ({CHECKSUM_KEY})")
    if digest != checksum(text, tensors):
        raise _corrupt(path, "checksum mismatch: the manifest or the data are corrupted")
    manifest = _json(text, path, "the manifest")
    if not isinstance(manifest, dict):
        raise _corrupt(path, "the manifest is not a JSON object")
    _check_fields(manifest, path)
    layers, floats = _parse_records(manifest, path, tensors.get("group_bits"))
    if manifest["format_version"] < 4:
        old = [rec.name for rec in layers if 2 in (rec.group_bits if rec.grouped else (rec.bits,))]
        if old:
            raise MbitsFormatError(
                f"{path_repr(path)} (format version {manifest['format_version']}) holds 2-bit layers "
                f"({short_repr(old[:3])}) whose codes are the ternary levels of older mixbits releases; this "
                f"mixbits reads 2-bit codes as four levels: export it again (mixbits export RUN_FOLDER)")
    expected = _expected_blob_sizes(layers, floats)
    blobs = {}
    for name, dtype in BLOBS.items():
        t = tensors.get(name, torch.zeros(0, dtype=dtype))
        if t.dtype != dtype or t.dim() != 1 or t.numel() != expected[name]:
            raise _corrupt(path, f"tensor {name!r} holds {t.numel()} {t.dtype} values, the manifest needs "
                                 f"{expected[name]} {dtype}")
        blobs[name] = t
    return MbitsFile(path=path, manifest=manifest, layers=layers, floats=floats, blobs=blobs,
                     file_bytes=len(data), header_bytes=8 + header_len)


def _unchecked_version(text: str) -> int | None:
    """The format version of an unchecked manifest text, if it plainly has one (for the upgrade message)."""
    try:
        v = json.loads(text[:100_000]).get("format_version")
    except (ValueError, RecursionError, AttributeError):
        return None
    return v if type(v) is int else None


def decode_state_dict(f: MbitsFile) -> dict[str, torch.Tensor]:
    """The float tensors of the file, keyed by state-dict key (shared tensors under every key).

    Quantized weights are dequantized exactly as the fake-quantized model computes them (a
    layer with structures: each channel at its structure's bits, one vectorised step per
    distinct bitwidth); 16-bit weights come back as float32 values of their float16 numbers.

    Raises:
        MbitsFormatError: a stored code that no quantizer produces (a corrupted file).
    """
    cursor = {name: 0 for name in BLOBS}

    def take(blob: str, count: int) -> torch.Tensor:
        start = cursor[blob]
        cursor[blob] = start + count
        return f.blobs[blob][start:start + count]

    def values(rec: LayerRecord, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
        """One run of ``shape[0]`` channels at ``bits``, channels first, float32."""
        n = _numel(shape)
        if bits in INT_BITS:
            try:
                codes = unpack_codes(take("codes", packed_nbytes(n, bits)), bits, shape)
            except ValueError as exc:
                raise _corrupt(f.path, f"layer {short_repr(rec.name)}: {str(exc)[:100]}") from None
            return dequantize(codes, take("scales", shape[0]), bits)  # (c, ...)
        if bits == HALF_BITS:
            return take("half", n).float().reshape(shape)
        return take("float", n).clone().reshape(shape)  # FLOAT_BITS, the only bitwidth left after _parse_records

    out: dict[str, torch.Tensor] = {}
    for rec in f.layers:
        if not rec.grouped:
            if rec.bits in (HALF_BITS, FLOAT_BITS):  # stored in the state-dict layout
                w = values(rec, rec.bits, rec.shape)
            else:
                w = channels_back(values(rec, rec.bits, rec.codes_shape), rec.channel_dim).contiguous()
        else:
            rest = rec.codes_shape[1:]
            wc = torch.empty(rec.codes_shape, dtype=torch.float32)  # (C, ...)
            channel_bits = torch.from_numpy(rec.channel_bits)  # (C,)
            for b, c in rec.bits_channels.items():  # ascending, as written
                rows = (channel_bits == b).nonzero().flatten()  # (c,), channel order
                wc.index_copy_(0, rows, values(rec, b, (c,) + rest))
            w = channels_back(wc, rec.channel_dim).contiguous()  # the state-dict layout
        for key in rec.state_keys:
            out[key] = w
    for frec in f.floats:
        t = take("float", frec.numel).clone().reshape(frec.shape)
        for key in (frec.key,) + frec.aliases:
            out[key] = t
    return out
