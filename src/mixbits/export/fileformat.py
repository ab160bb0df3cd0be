"""The ``.mbits`` file: a safetensors file whose metadata holds a JSON manifest.

Format version 1. The safetensors metadata has one key, ``"mixbits"``, whose
value is the manifest (compact JSON)::

    {"format_version": 1, "mixbits_version": "0.1.0", "scale_dtype": "float16", "bit_order": "little",
     "model": {"zoo": "digits_cnn", "kwargs": {...}},      # or {"import": "pkg.mod:fn", "kwargs": ...}, or null
     "input_shape": [1, 8, 8],                             # or null
     "layer_fields": ["name", "kind", "shape", "bits", "aliases"],
     "layers": [["features.0", "Conv2d", [32, 1, 3, 3], 2], ...],   # aliases only for a shared weight
     "float_fields": ["module", "names", "shape"],
     "floats": [["features.1", ["weight", "bias", "running_mean", "running_var"], [32]], ...],
     "float_aliases": {"head.bias": ["tied.bias"]},       # only when a float tensor is shared
     "layer_keys": {"lstm.weight_ih_l0": ["lstm.weight_ih_l0"]},  # only when not "<name>.weight" per name
     "promised_model_bits": 97760, "float_model_bits": 1881408,
     "crc32": {"codes": 745946478, "scales": ..., "float": ...}}

and at most four tensors, each the concatenation of its parts in manifest order:

* ``codes``  uint8: every 1..8-bit layer's codes packed at exactly its bits
  (:mod:`mixbits.export.pack`), each layer starting on a byte boundary;
* ``scales`` float16: every 1..8-bit layer's per-output-channel scales;
* ``half``   float16: every 16-bit layer's weight;
* ``float``  float32: every 32-bit layer's weight, then every ``floats`` entry
  (biases, norms, running statistics, layers kept in float).

One tensor per kind keeps the safetensors tensor table constant in size, and the
tabular manifest keeps the header at about 1.5 KB for the default CNN and 3 KB for
a ResNet-20. Integer buffers (``num_batches_tracked``) are not
stored, as the cost model does not count them. Reading never unpickles: the
data are raw little-endian arrays and the manifest is JSON.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from ..quant import HALF_BITS, INT_BITS, VALID_BITS, dequantize, weight_codes
from ..runfiles import atomic_write
from .pack import pack_codes, packed_nbytes, unpack_codes

__all__ = ["FORMAT_VERSION", "LayerRecord", "FloatRecord", "MbitsFile", "write_mbits", "read_mbits",
           "decode_state_dict", "records_to_json", "weight_key"]

FORMAT_VERSION = 1
METADATA_KEY = "mixbits"
SCALE_DTYPE = "float16"
LAYER_FIELDS = ("name", "kind", "shape", "bits", "aliases")  # aliases only when the weight is shared
FLOAT_FIELDS = ("module", "names", "shape")  # one row per run of same-shaped tensors of one module
BLOBS = {"codes": torch.uint8, "scales": torch.float16, "half": torch.float16, "float": torch.float32}


def weight_key(module_name: str) -> str:
    """State-dict key of a layer's weight (a bare ``weight`` for the root module)."""
    return f"{module_name}.weight" if module_name else "weight"


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


@dataclass(frozen=True)
class LayerRecord:
    """One quantized weight as stored: its name(s), shape, bits and state-dict keys."""

    name: str
    aliases: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    bits: int
    keys: tuple[str, ...] = ()  # state-dict keys; default weight_key of the name and each alias

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
    def stored_bytes(self) -> int:
        """Bytes this weight takes in the file (codes and scales, or half/float values)."""
        if self.bits in INT_BITS:
            return packed_nbytes(self.num_weights, self.bits) + 2 * self.shape[0]
        return self.num_weights * self.bits // 8


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
        layers: the quantized weights, in file order.
        floats: the float32 tensors, in file order.
        blobs: {"codes" | "scales" | "half" | "float": 1-D tensor}.
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
    """Number of elements of each blob implied by the manifest."""
    sizes = {name: 0 for name in BLOBS}
    for layer in layers:
        if layer.bits in INT_BITS:
            sizes["codes"] += packed_nbytes(layer.num_weights, layer.bits)
            sizes["scales"] += layer.shape[0]
        elif layer.bits == HALF_BITS:
            sizes["half"] += layer.num_weights
        else:
            sizes["float"] += layer.num_weights
    sizes["float"] += sum(f.numel for f in floats)
    return sizes


def _crc(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().view(torch.uint8).numpy().tobytes())


def encode_tensors(layers: list[tuple[LayerRecord, torch.Tensor]],
                   floats: list[tuple[FloatRecord, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Build the blobs from the quantized weights and the float tensors.

    Args:
        layers: (record, float weight) pairs; 1..8-bit weights are quantized here with
            :func:`mixbits.quant.weight_codes`, exactly as the fake-quantized model does.
        floats: (record, tensor) pairs, stored as float32.

    Returns:
        {blob name: 1-D tensor on the CPU}, empty blobs left out.

    Raises:
        ValueError: a quantized layer with NaN or infinite weights.
    """
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in BLOBS}
    for rec, w in layers:
        w = w.detach()
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"layer {rec.name!r} has NaN or infinite weights: nothing sensible to export")
        if rec.bits in INT_BITS:
            codes, scale = weight_codes(w, rec.bits)  # on w's device, as in the forward pass
            parts["codes"].append(pack_codes(codes, rec.bits))
            parts["scales"].append(scale.to("cpu", torch.float16).reshape(-1))  # exact: scales are float16 values
        elif rec.bits == HALF_BITS:
            parts["half"].append(w.to("cpu", torch.float16).reshape(-1))
        else:
            parts["float"].append(w.to("cpu", torch.float32).reshape(-1))
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

    manifest = dict(manifest)
    manifest["crc32"] = {name: _crc(t) for name, t in tensors.items()}
    data = save(dict(tensors), metadata={METADATA_KEY: json.dumps(manifest, separators=(",", ":"))})

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, writer)
    return len(data), 8 + int.from_bytes(data[:8], "little")


def _corrupt(path: str, why: str) -> ValueError:
    return ValueError(f"{path!r} is not a valid .mbits file: {why}")


def records_to_json(layers: tuple[LayerRecord, ...] | list[LayerRecord],
                    floats: tuple[FloatRecord, ...] | list[FloatRecord]) -> dict[str, Any]:
    """The manifest's tables: one row per layer, one row per run of same-shaped tensors of a module.

    Rows are lists, not objects, and the floats of one module share its name and shape
    (a BatchNorm is one row, not four): the header then stays a few KiB for a ResNet.
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
        "layers": [[r.name, r.kind, list(r.shape), r.bits] + ([list(r.aliases)] if r.aliases else []) for r in layers],
        "float_fields": list(FLOAT_FIELDS),
        "floats": groups,
    }
    aliases = {rec.key: list(rec.aliases) for rec in floats if rec.aliases}
    if aliases:
        out["float_aliases"] = aliases
    keys = {r.name: list(r.state_keys) for r in layers if not r.default_keys}
    if keys:
        out["layer_keys"] = keys
    return out


def _shape(value: Any, path: str, what: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    ok = isinstance(value, list) and (bool(value) or allow_empty) and all(
        isinstance(s, int) and not isinstance(s, bool) and (s >= 0 if allow_empty else s > 0) for s in value)
    if not ok:
        raise _corrupt(path, f"{what} has a bad shape {value!r} in the manifest")
    return tuple(value)


def _names(value: Any, path: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise _corrupt(path, f"{what} has bad names {value!r} in the manifest")
    return tuple(value)


def _parse_records(manifest: dict[str, Any], path: str) -> tuple[tuple[LayerRecord, ...], tuple[FloatRecord, ...]]:
    raw_layers, raw_floats = manifest.get("layers"), manifest.get("floats")
    if not isinstance(raw_layers, list) or not isinstance(raw_floats, list):
        raise _corrupt(path, "the manifest lacks its 'layers' or 'floats' table")
    if manifest.get("layer_fields") != list(LAYER_FIELDS) or manifest.get("float_fields") != list(FLOAT_FIELDS):
        raise _corrupt(path, f"the manifest's table columns are not {LAYER_FIELDS} and {FLOAT_FIELDS}")
    layer_keys = manifest.get("layer_keys", {})
    if not isinstance(layer_keys, dict):
        raise _corrupt(path, "bad layer_keys in the manifest")
    layers = []
    for row in raw_layers:
        if not isinstance(row, list) or len(row) not in (4, 5) or not isinstance(row[0], str):
            raise _corrupt(path, f"bad layer row {row!r} in the manifest")
        name, kind, shape, bits = row[:4]
        if isinstance(bits, bool) or bits not in VALID_BITS:
            raise _corrupt(path, f"layer {name!r} has unsupported bits {bits!r}")
        layers.append(LayerRecord(name=name, aliases=_names(row[4], path, name) if len(row) == 5 else (),
                                  kind=str(kind), shape=_shape(shape, path, name), bits=int(bits),
                                  keys=_names(layer_keys.get(name, []), path, name)))
    aliases = manifest.get("float_aliases", {})
    if not isinstance(aliases, dict):
        raise _corrupt(path, "bad float_aliases in the manifest")
    floats = []
    for row in raw_floats:
        if not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], str):
            raise _corrupt(path, f"bad float row {row!r} in the manifest")
        module, names, shape = row[0], _names(row[1], path, row[0]), _shape(row[2], path, row[0], allow_empty=True)
        for name in names:
            key = f"{module}.{name}" if module else name
            floats.append(FloatRecord(key=key, shape=shape, aliases=_names(aliases.get(key, []), path, key)))
    return tuple(layers), tuple(floats)


def read_mbits(path: str | Path) -> MbitsFile:
    """Read and validate a ``.mbits`` file without building any model and without unpickling.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a truncated or corrupted file, a safetensors file that is not a mixbits
            export, or a format version this mixbits does not read.
    """
    from safetensors.torch import load

    p = Path(path)
    path = str(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file {path!r} does not exist")
    data = p.read_bytes()
    try:
        tensors = load(data)
    except Exception as exc:  # SafetensorError: bad length prefix, broken header, truncated data
        raise _corrupt(path, f"truncated or corrupted ({exc})") from None
    header_len = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + header_len])
        meta = header.get("__metadata__") or {}
        if METADATA_KEY not in meta:
            raise _corrupt(path, "a safetensors file without a mixbits manifest (was it written by mixbits export?)")
        manifest = json.loads(meta[METADATA_KEY])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise _corrupt(path, f"the manifest is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise _corrupt(path, "the manifest is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        raise ValueError(
            f"{path!r} has format version {version!r}, but this mixbits reads version {FORMAT_VERSION}"
            + ("; upgrade mixbits to read it" if newer else "")
        )
    if manifest.get("scale_dtype") != SCALE_DTYPE or manifest.get("bit_order") != "little":
        raise _corrupt(path, f"unsupported scale dtype {manifest.get('scale_dtype')!r} or bit order "
                             f"{manifest.get('bit_order')!r} (version 1 stores float16 scales, little bit order)")
    layers, floats = _parse_records(manifest, path)
    expected = _expected_blob_sizes(layers, floats)
    unknown = sorted(set(tensors) - set(BLOBS))
    if unknown:
        raise _corrupt(path, f"unexpected tensors {unknown}")
    crcs = manifest.get("crc32")
    if not isinstance(crcs, dict):
        raise _corrupt(path, "the manifest lacks its crc32 checksums")
    blobs = {}
    for name, dtype in BLOBS.items():
        t = tensors.get(name, torch.zeros(0, dtype=dtype))
        if t.dtype != dtype or t.dim() != 1 or t.numel() != expected[name]:
            raise _corrupt(path, f"tensor {name!r} holds {t.numel()} {t.dtype} values, the manifest needs "
                                 f"{expected[name]} {dtype}")
        if t.numel() and crcs.get(name) != _crc(t):
            raise _corrupt(path, f"checksum mismatch in {name!r}: the data are corrupted")
        blobs[name] = t
    return MbitsFile(path=path, manifest=manifest, layers=layers, floats=floats, blobs=blobs,
                     file_bytes=len(data), header_bytes=8 + header_len)


def decode_state_dict(f: MbitsFile) -> dict[str, torch.Tensor]:
    """The float tensors of the file, keyed by state-dict key (shared tensors under every key).

    Quantized weights are dequantized exactly as the fake-quantized model computes them;
    16-bit weights come back as float32 values of their float16 numbers.

    Raises:
        ValueError: a stored code that no quantizer produces (a corrupted file).
    """
    cursor = {name: 0 for name in BLOBS}

    def take(blob: str, count: int) -> torch.Tensor:
        start = cursor[blob]
        cursor[blob] = start + count
        return f.blobs[blob][start:start + count]

    out: dict[str, torch.Tensor] = {}
    for rec in f.layers:
        if rec.bits in INT_BITS:
            try:
                codes = unpack_codes(take("codes", packed_nbytes(rec.num_weights, rec.bits)), rec.bits, rec.shape)
            except ValueError as exc:
                raise _corrupt(f.path, f"layer {rec.name!r}: {exc}") from None
            w = dequantize(codes, take("scales", rec.shape[0]), rec.bits)  # (C_out, ...)
        elif rec.bits == HALF_BITS:
            w = take("half", rec.num_weights).float().reshape(rec.shape)
        else:  # FLOAT_BITS, the only bitwidth left after _parse_records
            w = take("float", rec.num_weights).clone().reshape(rec.shape)
        for key in rec.state_keys:
            out[key] = w
    for frec in f.floats:
        t = take("float", frec.numel).clone().reshape(frec.shape)
        for key in (frec.key,) + frec.aliases:
            out[key] = t
    return out
