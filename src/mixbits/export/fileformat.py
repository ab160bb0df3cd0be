"""The ``.mbits`` file: a safetensors file whose metadata holds a JSON manifest.

Format version 2. The safetensors metadata has two keys: ``"mixbits"``, the
manifest (compact JSON), and ``"mixbits_sha256"``, one SHA-256 over the manifest
text and every tensor (name, dtype, shape and bytes, in the order below)::

    {"format_version": 2, "mixbits_version": "0.1.0", "scale_dtype": "float16", "bit_order": "little",
     "model": {"zoo": "digits_cnn", "kwargs": {...}},      # or {"import": "pkg.mod:fn", "kwargs": ...}, or null
     "input_shape": [1, 8, 8],                             # or null
     "layer_fields": ["name", "kind", "shape", "bits", "aliases"],
     "layers": [["features.0", "Conv2d", [32, 1, 3, 3], 2], ...],   # aliases only for a shared weight
     "float_fields": ["module", "names", "shape"],
     "floats": [["features.1", ["weight", "bias", "running_mean", "running_var"], [32]], ...],
     "float_aliases": {"head.bias": ["tied.bias"]},       # only when a float tensor is shared
     "layer_keys": {"lstm.weight_ih_l0": ["lstm.weight_ih_l0"]},  # only when not "<name>.weight" per name
     "layer_channel_dims": {"h.0.attn.c_attn": 1},       # only for layers whose scales are not along dim 0
     "promised_model_bits": 97760, "float_model_bits": 1881408}

and at most four tensors, each the concatenation of its parts in manifest order:

* ``codes``  uint8: every 1..8-bit layer's codes packed at exactly its bits
  (:mod:`mixbits.export.pack`), each layer starting on a byte boundary;
* ``scales`` float16: every 1..8-bit layer's per-output-channel scales;
* ``half``   float16: every 16-bit layer's weight;
* ``float``  float32: every 32-bit layer's weight, then every ``floats`` entry
  (biases, norms, running statistics, layers kept in float).

A layer's codes and scales are those of its weight with the output-channel
dimension (``layer_channel_dims``, default 0) moved first: a Hugging Face
``Conv1D`` weight of shape (in, out) stores the codes of its (out, in) transpose
and ``out`` scales. The manifest's shape stays the state-dict shape.

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
from typing import Any, Mapping

import torch

from ..quant import HALF_BITS, INT_BITS, VALID_BITS, channels_back, channels_first, dequantize, weight_codes
from ..runfiles import atomic_write
from .pack import pack_codes, packed_nbytes, unpack_codes

__all__ = ["FORMAT_VERSION", "MbitsFormatError", "LayerRecord", "FloatRecord", "MbitsFile", "write_mbits",
           "read_mbits", "decode_state_dict", "records_to_json", "weight_key", "checksum", "float_records",
           "header_bytes_bound", "RECIPE_ALLOWANCE_BYTES"]

FORMAT_VERSION = 2
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
BLOBS = {"codes": torch.uint8, "scales": torch.float16, "half": torch.float16, "float": torch.float32}


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


@dataclass(frozen=True)
class LayerRecord:
    """One quantized weight as stored: its name(s), shape, bits and state-dict keys."""

    name: str
    aliases: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    bits: int
    keys: tuple[str, ...] = ()  # state-dict keys; default weight_key of the name and each alias
    channel_dim: int = 0  # the dimension of shape with one scale per index

    @property
    def num_channels(self) -> int:
        """Scales a 1..8-bit weight stores: one per index of ``channel_dim``."""
        return self.shape[self.channel_dim]

    @property
    def codes_shape(self) -> tuple[int, ...]:
        """The shape the codes are stored in: ``shape`` with ``channel_dim`` moved first."""
        d = self.channel_dim
        return (self.shape[d],) + self.shape[:d] + self.shape[d + 1:]

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
            return packed_nbytes(self.num_weights, self.bits) + 2 * self.num_channels
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
            sizes["scales"] += layer.num_channels
        elif layer.bits == HALF_BITS:
            sizes["half"] += layer.num_weights
        else:
            sizes["float"] += layer.num_weights
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
            # on w's device and in the layout of the forward pass (output channels first)
            codes, scale = weight_codes(channels_first(w, rec.channel_dim), rec.bits)
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
    :func:`write_mbits` builds it, with every number at its widest: two-digit bits, the float
    model's size for the promise, and every tensor size and offset written with one more digit
    than the float model's byte count. The model recipe, the input shape and the mixbits
    version get :data:`RECIPE_ALLOWANCE_BYTES` together.

    Args:
        layers: the quantized weights (their ``bits`` are ignored).
        floats: the tensors kept in float32.
        float_model_bits: size of the whole float32 model, bits.
    """
    widest = [LayerRecord(name=r.name, aliases=r.aliases, kind=r.kind, shape=r.shape, bits=32, keys=r.keys,
                          channel_dim=r.channel_dim) for r in layers]
    manifest = {"format_version": FORMAT_VERSION, "mixbits_version": "", "scale_dtype": SCALE_DTYPE,
                "bit_order": "little", "model": None, "input_shape": None, **records_to_json(widest, list(floats)),
                "promised_model_bits": float_model_bits, "float_model_bits": float_model_bits}
    text = json.dumps(manifest, separators=(",", ":"))
    big = 10 * (float_model_bits // 8 + len(layers) + 1)  # more than any element count or byte offset
    table: dict[str, Any] = {"__metadata__": {METADATA_KEY: text, CHECKSUM_KEY: "0" * 64}}
    table.update({name: {"dtype": "F32", "shape": [big], "data_offsets": [big, big]} for name in BLOBS})
    header = len(json.dumps(table, separators=(",", ":")).encode("utf-8"))
    return 8 + header + 7 + RECIPE_ALLOWANCE_BYTES  # length prefix, table, padding to 8 bytes, recipe


def _corrupt(path: str, why: str) -> MbitsFormatError:
    return MbitsFormatError(f"{path_repr(path)} is not a valid .mbits file: {why}")


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
    dims = {r.name: r.channel_dim for r in layers if r.channel_dim}
    if dims:
        out["layer_channel_dims"] = dims
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


def _parse_records(manifest: dict[str, Any], path: str) -> tuple[tuple[LayerRecord, ...], tuple[FloatRecord, ...]]:
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
    layers = []
    for row in raw_layers:
        if not isinstance(row, list) or len(row) not in (4, 5):
            raise _corrupt(path, f"bad layer row {short_repr(row)} in the manifest")
        name, kind, shape, bits = _name(row[0], path, "layer name"), _name(row[1], path, "layer kind"), row[2], row[3]
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in VALID_BITS:
            raise _corrupt(path, f"layer {short_repr(name)} has unsupported bits {short_repr(bits)}")
        shape = _shape(shape, path, name)
        cdim = channel_dims.get(name, 0)
        if type(cdim) is not int or not 0 <= cdim < len(shape):
            raise _corrupt(path, f"layer {short_repr(name)} has a bad channel dimension {short_repr(cdim)} for "
                                 f"shape {short_repr(list(shape))}")
        layers.append(LayerRecord(name=name, aliases=_names(row[4], path, name) if len(row) == 5 else (),
                                  kind=kind, shape=shape, bits=bits,
                                  keys=_names(layer_keys.get(name, []), path, name), channel_dim=cdim))
    unknown = set(channel_dims) - {rec.name for rec in layers}
    if unknown:
        raise _corrupt(path, f"layer_channel_dims names {short_repr(sorted(unknown))}, which are not layers")
    aliases = manifest.get("float_aliases", {})
    if not isinstance(aliases, dict):
        raise _corrupt(path, "bad float_aliases in the manifest")
    floats = []
    for row in raw_floats:
        if not isinstance(row, list) or len(row) != 3:
            raise _corrupt(path, f"bad float row {short_repr(row)} in the manifest")
        module = _name(row[0], path, "module name")
        names, shape = _names(row[1], path, module), _shape(row[2], path, module, allow_empty=True)
        for name in names:
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
    if type(version) is not int or version != FORMAT_VERSION:  # True and 1.0 are not versions
        newer = type(version) is int and version > FORMAT_VERSION
        older = type(version) is int and 0 < version < FORMAT_VERSION
        raise MbitsFormatError(
            f"{path_repr(path)} has format version {short_repr(version)}, but this mixbits reads version "
            f"{FORMAT_VERSION}" + ("; upgrade mixbits to read it" if newer else "")
            + ("; export it again with this mixbits (mixbits export RUN_FOLDER)" if older else ""))
    if manifest.get("scale_dtype") != SCALE_DTYPE or manifest.get("bit_order") != "little":
        raise _corrupt(path, f"unsupported scale dtype {short_repr(manifest.get('scale_dtype'))} or bit order "
                             f"{short_repr(manifest.get('bit_order'))} (version {FORMAT_VERSION} stores float16 "
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
    """Read and validate a ``.mbits`` file without building any model and without unpickling.

    The checksum is verified before the manifest is parsed; the manifest is then checked
    field by field (types, bounds, consistency with the tensors).

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
        if version is not None and version < FORMAT_VERSION:
            _check_fields({"format_version": version}, path)
        raise _corrupt(path, f"it lacks its checksum ({CHECKSUM_KEY})")
    if digest != checksum(text, tensors):
        raise _corrupt(path, "checksum mismatch: the manifest or the data are corrupted")
    manifest = _json(text, path, "the manifest")
    if not isinstance(manifest, dict):
        raise _corrupt(path, "the manifest is not a JSON object")
    _check_fields(manifest, path)
    layers, floats = _parse_records(manifest, path)
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

    Quantized weights are dequantized exactly as the fake-quantized model computes them;
    16-bit weights come back as float32 values of their float16 numbers.

    Raises:
        MbitsFormatError: a stored code that no quantizer produces (a corrupted file).
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
                codes = unpack_codes(take("codes", packed_nbytes(rec.num_weights, rec.bits)), rec.bits,
                                     rec.codes_shape)
            except ValueError as exc:
                raise _corrupt(f.path, f"layer {short_repr(rec.name)}: {str(exc)[:100]}") from None
            w = dequantize(codes, take("scales", rec.num_channels), rec.bits)  # (C_out, ...)
            w = channels_back(w, rec.channel_dim).contiguous()  # the state-dict layout
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
