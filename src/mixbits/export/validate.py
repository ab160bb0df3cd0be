"""Validation of a ``.mbits`` manifest: every field checked for type, bounds and consistency before anything is built."""

from __future__ import annotations

from typing import Any

import torch

from ..quant import VALID_BITS
from .group_codes import unpack_group_bits
from .layout import (FLOAT_FIELDS, FORMAT_VERSION, GROUPED_ROW_BITS, LAYER_FIELDS, MAX_DIM, MAX_DIMS,
                     MAX_NAME_CHARS, READ_VERSIONS, SCALE_DTYPE, MbitsFormatError, corrupt, path_repr, short_repr)
from .preprocessing import MANIFEST_KEY as PREPROCESSING_KEY
from .preprocessing import parse_preprocessing
from .records import FloatRecord, LayerRecord, numel, weight_key

__all__ = ["parse_records", "check_fields"]


def _shape(value: Any, path: str, what: str, *, allow_empty: bool = False) -> tuple[int, ...]:
    ok = isinstance(value, list) and (bool(value) or allow_empty) and len(value) <= MAX_DIMS and all(
        isinstance(s, int) and not isinstance(s, bool) and (0 if allow_empty else 1) <= s <= MAX_DIM for s in value)
    if not ok:
        raise corrupt(path, f"{short_repr(what)} has a bad shape {short_repr(value)} in the manifest")
    return tuple(value)


def _name(value: Any, path: str, what: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS:
        raise corrupt(path, f"bad {what} {short_repr(value)} in the manifest")
    return value


def _names(value: Any, path: str, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(s, str) and 0 < len(s) <= MAX_NAME_CHARS for s in value):
        raise corrupt(path, f"{short_repr(what)} has bad names {short_repr(value)} in the manifest")
    return tuple(value)


def _group_size(name: str, value: Any, channels: int, path: str) -> int:
    if type(value) is not int or not 1 <= value < channels:
        raise corrupt(path, f"layer {short_repr(name)} has a bad group size {short_repr(value)} in layer_groups "
                             f"(want an integer in 1..{channels - 1}: fewer channels than its {channels})")
    return value


def parse_records(manifest: dict[str, Any], path: str, group_blob: torch.Tensor | None = None
                  ) -> tuple[tuple[LayerRecord, ...], tuple[FloatRecord, ...]]:
    """The layer and float records of a checked manifest, every field validated.

    Args:
        manifest: the parsed manifest (its scalar fields already checked by :func:`check_fields`, its
            table sizes by :func:`mixbits.export.bounds.check_counts`).
        path: the file, for messages.
        group_blob: the file's ``group_bits`` tensor (absent: empty; its dtype and shape already checked),
            which holds the bits of the layers named in ``layer_groups``.

    Raises:
        MbitsFormatError: any field of the wrong type, out of bounds or inconsistent; a ``group_bits``
            tensor of the wrong size, a structure code above 9 or a non-zero padding nibble; a state-dict
            key named twice, or a layer key that is not its own name's.
    """
    raw_layers, raw_floats = manifest.get("layers"), manifest.get("floats")
    if not isinstance(raw_layers, list) or not isinstance(raw_floats, list):
        raise corrupt(path, "the manifest lacks its 'layers' or 'floats' table")
    if manifest.get("layer_fields") != list(LAYER_FIELDS) or manifest.get("float_fields") != list(FLOAT_FIELDS):
        raise corrupt(path, f"the manifest's table columns are not {LAYER_FIELDS} and {FLOAT_FIELDS}")
    tables = {key: _table(manifest, key, path) for key in OPTIONAL_TABLES}
    if tables["layer_groups"] and manifest.get("format_version") == 2:
        raise corrupt(path, "a version 2 manifest with layer_groups (structures are new in version 3)")
    rows = [_layer_row(row, tables, path) for row in raw_layers]
    layers = _with_group_bits(rows, group_blob if group_blob is not None else torch.zeros(0, dtype=torch.uint8),
                              tables["layer_keys"], path)
    names = [n for rec in layers for n in (rec.name,) + rec.aliases]
    _once(names, path, "layer name")
    for what in ("layer_channel_dims", "layer_groups", "layer_keys"):
        unknown = set(tables[what]) - {rec.name for rec in layers}
        if unknown:
            raise corrupt(path, f"{what} names {short_repr(sorted(unknown))}, which are not layers")
    for rec in layers:
        _check_layer_keys(rec, path)
    floats = _float_records(raw_floats, tables["float_aliases"], manifest.get("float_infinite", []), path)
    _once([k for rec in layers for k in rec.state_keys] + [k for rec in floats for k in (rec.key,) + rec.aliases],
          path, "state-dict key")
    return tuple(layers), tuple(floats)


OPTIONAL_TABLES = ("layer_keys", "layer_channel_dims", "layer_groups", "float_aliases")


def _table(manifest: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    """An optional {name: value} table of the manifest (absent: empty)."""
    table = manifest.get(key, {})
    if not isinstance(table, dict):
        raise corrupt(path, f"bad {key} in the manifest")
    return table


def _layer_row(row: Any, tables: dict[str, dict[str, Any]], path: str) -> tuple:
    """One checked layer row: (name, kind, shape, bits, aliases, channel dim, group size, structures)."""
    if not isinstance(row, list) or len(row) not in (4, 5):
        raise corrupt(path, f"bad layer row {short_repr(row)} in the manifest")
    name, kind, shape, bits = _name(row[0], path, "layer name"), _name(row[1], path, "layer kind"), row[2], row[3]
    grouped = name in tables["layer_groups"]
    if isinstance(bits, bool) or not isinstance(bits, int) or (
            bits != GROUPED_ROW_BITS if grouped else bits not in VALID_BITS):
        raise corrupt(path, f"layer {short_repr(name)} has bits {short_repr(bits)} in its row, but a layer with "
                            f"structures (named in layer_groups) has {GROUPED_ROW_BITS} there" if grouped else
                      f"layer {short_repr(name)} has unsupported bits {short_repr(bits)}")
    shape = _shape(shape, path, name)
    cdim = tables["layer_channel_dims"].get(name, 0)
    if type(cdim) is not int or not 0 <= cdim < len(shape):
        raise corrupt(path, f"layer {short_repr(name)} has a bad channel dimension {short_repr(cdim)} for "
                            f"shape {short_repr(list(shape))}")
    group_size = _group_size(name, tables["layer_groups"][name], shape[cdim], path) if grouped else 0
    count = -(-shape[cdim] // group_size) if grouped else 1  # ceil, exact for any size
    return (name, kind, shape, bits, _names(row[4], path, name) if len(row) == 5 else (), cdim, group_size, count)


def _with_group_bits(rows: list[tuple], group_blob: torch.Tensor, layer_keys: dict[str, Any],
                     path: str) -> list[LayerRecord]:
    """The layer records, the bits of layers with structures decoded from ``group_bits``."""
    # the tensor's size first (no allocation follows from a crafted count), then per layer
    need = sum((count + 1) // 2 for *_, group_size, count in rows if group_size)
    if group_blob.numel() != need:
        raise corrupt(path, f"tensor 'group_bits' holds {group_blob.numel()} uint8 values, the manifest needs {need}")
    group_cursor = 0
    layers = []
    for name, kind, shape, bits, layer_aliases, cdim, group_size, count in rows:
        if group_size:
            chunk = group_blob[group_cursor:group_cursor + (count + 1) // 2]
            group_cursor += (count + 1) // 2
            try:
                bits = unpack_group_bits(chunk, count)
            except ValueError as exc:
                raise corrupt(path, f"layer {short_repr(name)}: {str(exc)[:100]}") from None
        layers.append(LayerRecord(name=name, aliases=layer_aliases, kind=kind, shape=shape, bits=bits,
                                  keys=_names(layer_keys.get(name, []), path, name), channel_dim=cdim,
                                  group_size=group_size))
    return layers


def _check_layer_keys(rec: LayerRecord, path: str) -> None:
    """A layer's explicit state-dict keys: one per name, each that name's own (``<name>.weight`` or the name).

    The exporter writes, for every use of a weight, its module's ``<module>.<parameter>`` key, and names the
    use ``<module>`` for a ``weight`` and ``<module>.<parameter>`` otherwise; a key that is no name's of
    its layer would hand this tensor to another record's key.
    """
    if not rec.keys:
        return
    names = (rec.name,) + rec.aliases
    own = {n for n in names} | {weight_key(n) for n in names}
    stray = [k for k in rec.keys if k not in own]
    if stray or len(rec.keys) != len(names):
        raise corrupt(path, f"layer {short_repr(rec.name)} has state-dict keys {short_repr(list(rec.keys))} in "
                            f"layer_keys, but its {len(names)} name(s) {short_repr(list(names))} have one key each, "
                            f"'<name>.weight' or the name itself")


def _float_records(raw_floats: list[Any], aliases: dict[str, Any], infinite: Any, path: str) -> list[FloatRecord]:
    """The float records of the ``floats`` table, their aliases, and which of them may hold infinities."""
    if not isinstance(infinite, list) or not all(isinstance(k, str) for k in infinite):
        raise corrupt(path, f"bad float_infinite {short_repr(infinite)} in the manifest (want a list of keys)")
    declared = set(infinite)
    floats = []
    for row in raw_floats:
        if not isinstance(row, list) or len(row) != 3:
            raise corrupt(path, f"bad float row {short_repr(row)} in the manifest")
        module = _name(row[0], path, "module name")
        names_, shape = _names(row[1], path, module), _shape(row[2], path, module, allow_empty=True)
        for name in names_:
            key = f"{module}.{name}" if module else name
            floats.append(FloatRecord(key=key, shape=shape, aliases=_names(aliases.get(key, []), path, key),
                                      infinite=key in declared))
    keys = {rec.key for rec in floats}
    for what, table in (("float_aliases", aliases), ("float_infinite", declared)):
        unknown = set(table) - keys
        if unknown:
            raise corrupt(path, f"{what} names {short_repr(sorted(unknown))}, which are not float tensors")
    bn = [rec.key for rec in floats if rec.infinite and rec.bn_stat]
    if bn:
        raise corrupt(path, f"float_infinite names the BatchNorm statistics {short_repr(bn)}, which are finite")
    return floats


def _once(names: list[str], path: str, what: str) -> None:
    """Raise if a name occurs twice (in linear time: the list may hold every key of the file)."""
    if len(set(names)) != len(names):
        seen: set[str] = set()
        twice = sorted({n for n in names if n in seen or seen.add(n)})  # type: ignore[func-returns-value]
        raise corrupt(path, f"the manifest names the {what}s {short_repr(twice)} twice")


def check_fields(manifest: dict[str, Any], path: str) -> None:
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
        raise corrupt(path, f"unsupported scale dtype {short_repr(manifest.get('scale_dtype'))} or bit order "
                             f"{short_repr(manifest.get('bit_order'))} (version {version} stores float16 "
                             f"scales, little bit order)")
    for key in ("promised_model_bits", "float_model_bits"):
        v = manifest.get(key)
        if v is not None and (type(v) is not int or not 0 <= v <= 1 << 62):
            raise corrupt(path, f"bad {key} {short_repr(v)} in the manifest")
    if not isinstance(manifest.get("mixbits_version", ""), str):
        raise corrupt(path, "bad mixbits_version in the manifest")
    shape = manifest.get("input_shape")
    if shape is not None and (len(_shape(shape, path, "input_shape")) > 4 or numel(tuple(shape)) > 1 << 24):
        raise corrupt(path, f"input_shape {short_repr(shape)} is larger than one sample can be")
    try:
        parse_preprocessing(manifest.get(PREPROCESSING_KEY), shape)
    except ValueError as exc:
        raise corrupt(path, f"bad preprocessing in the manifest: {str(exc)[:160]}") from None
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
        raise corrupt(path, f"malformed model recipe {short_repr(recipe)} (want {{'zoo' or 'import': NAME, "
                             f"'kwargs': {{name: number, string or bool}}}})")


def _plain_scalar(v: Any) -> bool:
    if isinstance(v, bool) or v is None:
        return True
    if isinstance(v, int):
        return abs(v) <= 1 << 31
    if isinstance(v, float):
        return abs(v) <= 1e6 or v == 0.0
    return isinstance(v, str) and len(v) <= 200

