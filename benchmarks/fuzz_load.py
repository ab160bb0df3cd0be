"""Fuzz ``mixbits.load`` and ``mixbits inspect`` with mutations of a real exported ``.mbits`` file.

One real file (the built-in ``digits_cnn`` at mixed 1..32 bits, three of its four layers
with bits per structure of 3 output channels, exported with its zoo recipe; format
version 3) is mutated N times, with a fixed seed, in five families (``values`` twice in
every six files, so a third of them):

- ``bytes``: bit flips, random bytes, truncation, appended or deleted or repeated spans;
- ``stale``: JSON edits of the manifest (and edits of the ``group_bits`` tensor) that keep
  the old checksum (damage, hand edits);
- ``forged``: the same edits with the checksum recomputed (a forger's file);
- ``header``: edits of the safetensors tensor table (dtypes, shapes, offsets), checksum kept;
- ``values``: forged edits of the numbers, keys, counts and names (:data:`VALUE_EDITS`,
  checksum recomputed): NaN/inf/negative/zero/out-of-range scales, non-finite 16/32-bit
  weights, negative or non-finite BatchNorm statistics, undeclared and declared infinities,
  swapped and out-of-range structure codes, codes that do not reach their scale, ``layer_keys``
  that steal or swap keys, 0-d, wrong-dtype and 2-D tensors, a floats row naming 1.2M
  tensors, 400k, 30k and 16k one-weight layers, layers without data, escape codes, lone
  surrogates and bidi overrides in names.

The manifest edits include the attacks of issue 10: recipes that name ``os:system`` or a canary
module, widths of 3000 and 8000, swapped BatchNorm names, a deeply nested manifest,
2 MB layer names, a 5000-digit integer, ``format_version`` true or 1.0; and edits of the
structures: bad group sizes, ``layer_groups`` dropped or naming no layer, a version 2
claim, structure codes out of range, non-zero padding nibbles.

Each file is described and formatted as ``mixbits inspect`` prints it, then loaded, in a
worker subprocess under a memory limit; a case that gives no answer within the time limit
is a hang (the worker is restarted). Every outcome must be the library's own error
(``MbitsFormatError`` or ``CodeNotTrustedError``) or a model whose outputs equal the
original's; a forged file may also load as another model, but only when the exporter could
have written it (each value edit says whether it could). A canary module and ``touch``
commands prove that no code the file names ran.

    OMP_NUM_THREADS=1 python benchmarks/fuzz_load.py --mutations 900 --seed 0 \\
        --json benchmarks/results/fuzz_load.json --markdown benchmarks/results/fuzz_load.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import describe as provenance_line, provenance  # noqa: E402  (benchmarks/ is not a package)

LIBRARY_ERRORS = ("MbitsFormatError", "CodeNotTrustedError")
KWARGS = {"in_channels": 1, "num_classes": 10, "input_size": 8, "width": 8}
CANARY_MODULE = "fuzz_canary_module"


def make_original(path: Path) -> Path:
    """Export the built-in digits_cnn (width 8) at mixed bits with trained-looking BatchNorm statistics.

    ``features.0`` is pinned at 2 bits (one bitwidth); the other layers have bits per structure
    of 3 output channels, every candidate among them.
    """
    import torch
    from torch import nn

    from mixbits import PrepareConfig, export_model, prepare_
    from mixbits.models import create_model

    torch.manual_seed(0)
    model = create_model("digits_cnn", **KWARGS)
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8, 16, 32), granularity="group:3",
                                          pins={"features.0": 2}))
    cycle = (1, 4, 32, 16, 8, 2)
    bits = {layer.name: tuple(cycle[(i + g) % len(cycle)] for g in range(layer.num_groups)) if layer.grouped else 2
            for i, layer in enumerate(space.layers)}
    space.fix_(bits)
    export_model(model.eval(), space, path, zoo="digits_cnn", model_kwargs=KWARGS, input_shape=(1, 8, 8))
    return path


# ---- mutations -------------------------------------------------------------------------------------------

def _split(data: bytes) -> tuple[dict, dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return header, header["__metadata__"], data[8 + n:]


def _rebuild(header: dict, body: bytes) -> bytes:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + body


def _with_manifest(data: bytes, text: str, forged: bool, tensor_edit: Callable[[dict], Any] | None = None) -> bytes:
    from safetensors.torch import load, save

    from mixbits.export.fileformat import checksum

    tensors = load(data)
    if tensor_edit is not None:
        tensor_edit(tensors)
    _, meta, _ = _split(data)
    digest = checksum(text, tensors) if forged else meta["mixbits_sha256"]
    return save(tensors, metadata={"mixbits": text, "mixbits_sha256": digest})


def _bn_row(m: dict) -> list:
    return next(r for r in m["floats"] if "running_mean" in r[1])


def _swap(names: list, a: str, b: str) -> None:
    i, j = names.index(a), names.index(b)
    names[i], names[j] = names[j], names[i]


POOL = [None, True, False, -1, 0, 1, 2 ** 70, 3000, 8000, 1.5, float("1e308"), "", "x", "digits_cnn", [], {}, [1],
        {"a": 1}, "a" * 5000, [[[[[]]]]]]


def _random_paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _random_paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _random_paths(v, prefix + (i,))
    return out


def _set(obj: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def _delete(obj: Any, path: tuple) -> None:
    for key in path[:-1]:
        obj = obj[key]
    del obj[path[-1]]


def manifest_edits(canary: Path) -> list[tuple[str, Callable[[dict, random.Random], Any]]]:
    """Named edits of a parsed manifest: in place, or returning raw manifest text."""
    touch = {"command": f"touch {canary}"}
    return [
        ("swap running_mean/running_var", lambda m, r: _swap(_bn_row(m)[1], "running_mean", "running_var")),
        ("swap weight/bias", lambda m, r: _swap(_bn_row(m)[1], "weight", "bias")),
        ("width 3000", lambda m, r: m["model"]["kwargs"].update(width=3000)),
        ("width 8000", lambda m, r: m["model"]["kwargs"].update(width=8000)),
        ("import os:system", lambda m, r: m.update(model={"import": "os:system", "kwargs": touch})),
        ("zoo os:system", lambda m, r: m.update(model={"zoo": "os:system", "kwargs": touch})),
        ("import canary", lambda m, r: m.update(model={"import": f"{CANARY_MODULE}:build", "kwargs": {}})),
        ("zoo canary", lambda m, r: m.update(model={"zoo": f"{CANARY_MODULE}:build", "kwargs": KWARGS})),
        ("import builtins:exec", lambda m, r: m.update(
            model={"import": "builtins:exec", "kwargs": {"source": f"open({str(canary)!r}, 'w')"}})),
        ("format_version true", lambda m, r: m.update(format_version=True)),
        ("format_version 1.0", lambda m, r: m.update(format_version=1.0)),
        ("format_version 2.0", lambda m, r: m.update(format_version=2.0)),
        ("format_version 4", lambda m, r: m.update(format_version=4)),
        ("deeply nested", lambda m, r: json.dumps(m)[:-1] + ',"deep":' + "[" * 100_000 + "]" * 100_000 + "}"),
        ("nested layers", lambda m, r: json.dumps({**m, "layers": None}).replace(
            '"layers":null', '"layers":' + "[" * 900 + "]" * 900)),
        ("long layer name", lambda m, r: m["layers"][r.randrange(len(m["layers"]))].__setitem__(0, "x" * 2_000_000)),
        ("5000-digit integer", lambda m, r: json.dumps(m)[:-1] + ',"promised_model_bits":' + "7" * 5000 + "}"),
        ("change bits", lambda m, r: m["layers"][r.randrange(len(m["layers"]))].__setitem__(3, r.choice(
            [1, 2, 3, 4, 5, 6, 7, 8, 16, 32]))),
        ("permute a shape", lambda m, r: m["layers"][r.randrange(len(m["layers"]))][2].reverse()),
        ("swap two layer names", lambda m, r: _swap_layer_names(m, r)),
        ("drop a float row", lambda m, r: m["floats"].pop(r.randrange(len(m["floats"])))),
        ("repeat a float row", lambda m, r: m["floats"].append(r.choice(m["floats"]))),
        ("huge input shape", lambda m, r: m.update(input_shape=[1, 1 << 30, 1 << 30])),
        ("random value", lambda m, r: _set(m, r.choice(_random_paths(m)), r.choice(POOL))),
        ("random value", lambda m, r: _set(m, r.choice(_random_paths(m)), r.choice(POOL))),
        ("random value", lambda m, r: _set(m, r.choice(_random_paths(m)), r.choice(POOL))),
        ("delete a key", lambda m, r: _delete(m, r.choice(_random_paths(m)))),
        ("not an object", lambda m, r: r.choice(["[]", "null", "1", '"mixbits"', "{", ""])),
        ("change a group size", lambda m, r: m["layer_groups"].__setitem__(
            r.choice(sorted(m["layer_groups"])), r.choice([0, 1, 2, 4, 15, 16, 100, -1, "3", True, 3.0, None]))),
        ("drop layer_groups", lambda m, r: m.pop("layer_groups")),
        ("layer_groups of no layer", lambda m, r: m["layer_groups"].update({"nowhere": 2})),
        ("grouped layer with bits", lambda m, r: next(
            row for row in m["layers"] if row[0] in m["layer_groups"]).__setitem__(3, r.choice([1, 2, 4, 8, 32]))),
        ("format_version 2", lambda m, r: m.update(format_version=2)),
        ("group code out of range", lambda m, r: _group_edit(r, lambda g, i: g.__setitem__(i, 0xA0 | int(g[i]) & 15))),
        ("random group byte", lambda m, r: _group_edit(r, lambda g, i: g.__setitem__(i, r.randrange(256)))),
        ("group padding nibble", lambda m, r: _group_edit(r, lambda g, i: g.__setitem__(-1, int(g[-1]) | 0xF0))),
    ]


# ---- value edits: forged files (checksum recomputed) whose numbers, keys, counts or names are hostile ----------

NAN, INF = float("nan"), float("inf")


def file_layout(path: Path) -> dict[str, Any]:
    """Where things are in the original's blobs: float tensors by key, the first layer's codes, the structures."""
    from mixbits.export import read_mbits
    from mixbits.export.pack import packed_nbytes

    f = read_mbits(path)
    head = f.blobs["float"].numel() - sum(rec.numel for rec in f.floats)
    floats, offset = {}, head
    for rec in f.floats:
        floats[rec.key] = (offset, rec.numel)
        offset += rec.numel
    first = f.layers[0]
    return {"float_head": head, "floats": floats, "first_layer": first.name,
            "first_codes": packed_nbytes(first.num_weights, first.bits), "first_bits": first.bits,
            "names": [rec.name for rec in f.layers], "groups": f.blobs["group_bits"].numel()}


def _in_float(lay: dict, key_part: str, r: random.Random) -> int:
    """A random element of a random float tensor whose key ends with ``key_part``."""
    keys = [k for k in lay["floats"] if k.endswith(key_part)]
    off, n = lay["floats"][r.choice(keys)]
    return off + r.randrange(n)


def _set_value(blob: str, where: Callable[[dict, random.Random], int], value: Any) -> Callable:
    def edit(m: dict, t: dict, lay: dict, r: random.Random) -> None:
        v = value(r) if callable(value) else value
        t[blob][where(lay, r)] = v
    return edit


def _scale_at(lay: dict, r: random.Random) -> int:
    return r.randrange(35)  # the original has 35 scales


def _half_at(lay: dict, r: random.Random) -> int:
    return r.randrange(840)  # and 840 16-bit weights


def _swap_nibbles(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    """Swap the 4-bit codes of two structures of one layer (the byte's two nibbles, or two bytes' low nibbles)."""
    g = t["group_bits"]
    i = r.randrange(g.numel())
    if r.random() < 0.5:
        b = int(g[i])
        g[i] = (b >> 4) | ((b & 15) << 4)
    else:
        j = r.randrange(g.numel())
        bi, bj = int(g[i]), int(g[j])
        g[i], g[j] = (bi & 0xF0) | (bj & 15), (bj & 0xF0) | (bi & 15)


def _steal_key(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    """A layer_keys entry that hands another layer's (or a float tensor's) key to this layer's tensor."""
    a, b = r.sample(lay["names"], 2)
    other = r.choice([f"{b}.weight", r.choice(list(lay["floats"]))])
    m["layer_keys"] = {a: [other]}


def _swap_keys(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    """Two layers' keys exchanged in layer_keys (each record keeps its name)."""
    a, b = r.sample(lay["names"], 2)
    m["layer_keys"] = {a: [f"{b}.weight"], b: [f"{a}.weight"]}


def _zero_dim(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    import torch

    name = r.choice(sorted(t))
    t[name] = torch.zeros((), dtype=t[name].dtype)


def _wrong_dtype(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    import torch

    name = r.choice(sorted(t))
    t[name] = t[name].to(r.choice([torch.float32, torch.float16, torch.uint8, torch.int64, torch.bfloat16]))


def _reshape(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    name = r.choice(sorted(t))
    n = t[name].numel()
    t[name] = t[name].reshape(1, n) if r.random() < 0.5 else t[name][: n - n % 2].reshape(-1, 2)


def _many_float_names(count: int, elements: int) -> Callable:
    """A floats row naming ``count`` tensors of ``elements`` elements each (their data appended)."""
    def edit(m: dict, t: dict, lay: dict, r: random.Random) -> None:
        import torch

        m["floats"].append(["x", [f"n{i}" for i in range(count)], [elements] if elements != 1 else []])
        if elements:
            t["float"] = torch.cat([t["float"], torch.ones(count * elements)])
    return edit


def _many_layers(count: int, with_data: bool) -> Callable:
    """``count`` one-weight 32-bit layers (their data put before the floats, where 32-bit layers go)."""
    def edit(m: dict, t: dict, lay: dict, r: random.Random) -> None:
        import torch

        m["layers"].extend([f"l{i}", "Linear", [1], 32] for i in range(count))
        if with_data:
            h = lay["float_head"]
            t["float"] = torch.cat([t["float"][:h], torch.ones(count), t["float"][h:]])
    return edit


def _rename(name: str) -> Callable:
    def edit(m: dict, t: dict, lay: dict, r: random.Random) -> None:
        row = m["layers"][r.randrange(len(m["layers"]))]
        row[0] = name
        row[1] = name
    return edit


def _zero_codes(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    """Every code of the first layer (2 bits) set to 0: valid codes, which do not reach their scales."""
    t["codes"][: lay["first_codes"]] = 0x55


def _declare_inf(m: dict, t: dict, lay: dict, r: random.Random) -> None:
    """-inf in a bias, declared in float_infinite (as the exporter declares an attention mask's)."""
    key = r.choice([k for k in lay["floats"] if k.endswith("bias")])
    off, _ = lay["floats"][key]
    t["float"][off] = -INF
    m["float_infinite"] = [key]


# (name, edit, whether the exporter can write the result for some model: a load is then no failure)
VALUE_EDITS: list[tuple[str, Callable, bool]] = [
    ("scale NaN", _set_value("scales", _scale_at, NAN), False),
    ("scale +inf", _set_value("scales", _scale_at, INF), False),
    ("scale -inf", _set_value("scales", _scale_at, -INF), False),
    ("scale negative", _set_value("scales", _scale_at, lambda r: -r.choice([0.01, 0.5, 3.0])), False),
    ("scale zero", _set_value("scales", _scale_at, 0.0), False),
    ("scale subnormal", _set_value("scales", _scale_at, 2.0 ** -20), False),
    ("scale 65504", _set_value("scales", _scale_at, 65504.0), False),
    ("scale doubled", lambda m, t, lay, r: t["scales"].mul_(2), True),
    ("16-bit weight inf", _set_value("half", _half_at, lambda r: r.choice([INF, -INF])), False),
    ("16-bit weight NaN", _set_value("half", _half_at, NAN), False),
    ("32-bit weight NaN/inf", _set_value("float", lambda lay, r: r.randrange(lay["float_head"]),
                                         lambda r: r.choice([NAN, INF, -INF])), False),
    ("running_var negative", _set_value("float", lambda lay, r: _in_float(lay, "running_var", r),
                                        lambda r: -r.choice([1e-3, 0.5, 10.0])), False),
    ("running_var NaN/inf", _set_value("float", lambda lay, r: _in_float(lay, "running_var", r),
                                       lambda r: r.choice([NAN, INF])), False),
    ("running_mean NaN/inf", _set_value("float", lambda lay, r: _in_float(lay, "running_mean", r),
                                        lambda r: r.choice([NAN, INF, -INF])), False),
    ("BatchNorm weight NaN", _set_value("float", lambda lay, r: _in_float(lay, ".weight", r), NAN), False),
    ("bias inf undeclared", _set_value("float", lambda lay, r: _in_float(lay, "bias", r),
                                       lambda r: r.choice([INF, -INF])), False),
    ("bias -inf declared", _declare_inf, True),
    ("running_var 0", _set_value("float", lambda lay, r: _in_float(lay, "running_var", r), 0.0), True),
    ("swap group nibbles", _swap_nibbles, True),  # equal-size structures: a channel permutation
    ("group code out of range", lambda m, t, lay, r: _group_edit(r, lambda g, i: g.__setitem__(
        i, int(g[i]) | r.choice([0xA0, 0xF0, 0x0A, 0x0F])))(t), False),
    ("codes below their scale", _zero_codes, False),
    ("layer_keys steals a key", _steal_key, False),
    ("layer_keys swap two layers", _swap_keys, False),
    ("0-dim tensor", _zero_dim, False),
    ("wrong dtype tensor", _wrong_dtype, False),
    ("2-D tensor", _reshape, False),
    ("1.2M float names, 0 elements", _many_float_names(1_200_000, 0), False),
    ("300k float names, 1 element", _many_float_names(300_000, 1), False),
    ("400k one-weight layers", _many_layers(400_000, True), False),
    ("30k one-weight layers", _many_layers(30_000, True), False),  # more than MAX_TENSORS
    ("16k one-weight layers", _many_layers(16_000, True), True),  # a valid file of another model, at the bound
    ("10k layers, no data", _many_layers(10_000, False), False),
    ("escape codes in a name", _rename("\x1b[2J\x1b]0;PWNED\x07"), True),
    ("lone surrogate in a name", _rename("conv\ud800"), True),
    ("bidi override in a name", _rename("x\u202eyxz\u2066"), True),
]


def _group_edit(r: random.Random, edit: Callable[[Any, int], Any]) -> Callable[[dict], None]:
    """A tensor edit of the ``group_bits`` bytes (the per-structure bitwidth codes) at a random index."""
    def apply(tensors: dict) -> None:
        g = tensors["group_bits"]
        edit(g, r.randrange(g.numel()))
    return apply


def _swap_layer_names(m: dict, r: random.Random) -> None:
    a, b = r.sample(range(len(m["layers"])), 2)
    m["layers"][a][0], m["layers"][b][0] = m["layers"][b][0], m["layers"][a][0]


def _byte_mutation(data: bytes, r: random.Random) -> tuple[str, bytes]:
    b = bytearray(data)
    n = int.from_bytes(data[:8], "little")
    kind = r.choice(["flip", "flip header", "random bytes", "truncate", "append", "delete span", "repeat span",
                     "length prefix"])
    if kind == "flip":
        for _ in range(r.randint(1, 4)):
            b[r.randrange(len(b))] ^= 1 << r.randrange(8)
    elif kind == "flip header":
        for _ in range(r.randint(1, 3)):
            b[8 + r.randrange(n)] ^= 1 << r.randrange(8)
    elif kind == "random bytes":
        i = r.randrange(len(b))
        b[i:i + 4] = bytes(r.randrange(256) for _ in range(4))
    elif kind == "truncate":
        b = b[:r.randrange(len(b))]
    elif kind == "append":
        b += bytes(r.randrange(256) for _ in range(r.randint(1, 64)))
    elif kind == "delete span":
        i = r.randrange(len(b))
        del b[i:i + r.randint(1, 64)]
    elif kind == "repeat span":
        i = r.randrange(len(b))
        b[i:i] = b[i:i + r.randint(1, 64)]
    else:
        b[:8] = r.choice([0, 1, n - 1, n + 8, len(b), 1 << 40, (1 << 64) - 1]).to_bytes(8, "little")
    return kind, bytes(b)


def _header_mutation(data: bytes, r: random.Random) -> tuple[str, bytes]:
    header, _, body = _split(data)
    names = [k for k in header if k != "__metadata__"]
    t = header[r.choice(names)]
    kind = r.choice(["dtype", "shape", "offsets", "swap tensors", "drop tensor", "extra metadata"])
    if kind == "dtype":
        t["dtype"] = r.choice(["F16", "F32", "U8", "I64", "BF16", "F64"])
    elif kind == "shape":
        t["shape"] = r.choice([[], [0], [t["shape"][0] // 2], [t["shape"][0], 1], [1, t["shape"][0]]])
    elif kind == "offsets":
        lo, hi = t["data_offsets"]
        t["data_offsets"] = r.choice([[lo, hi - 2], [lo + 2, hi], [0, hi - lo], [lo, lo]])
    elif kind == "swap tensors" and len(names) > 1:
        a, c = r.sample(names, 2)
        header[a]["data_offsets"], header[c]["data_offsets"] = header[c]["data_offsets"], header[a]["data_offsets"]
    elif kind == "drop tensor":
        header.pop(r.choice(names))
    else:
        header["__metadata__"]["mixbits_sha256"] = "0" * 64
    return kind, _rebuild(header, body)


FAMILIES = ("bytes", "stale", "forged", "header", "values", "values")  # a third are value edits


def _value_mutation(data: bytes, lay: dict, edit: Callable, r: random.Random) -> bytes:
    """``data`` with a value edit applied to its manifest and tensors, the checksum recomputed (a forger's file)."""
    from safetensors.torch import load, save

    from mixbits.export.fileformat import checksum

    m = json.loads(_split(data)[1]["mixbits"])
    tensors = load(data)
    edit(m, tensors, lay, r)
    text = json.dumps(m, separators=(",", ":"))
    try:
        digest = checksum(text, tensors)
    except RuntimeError:  # a 0-d tensor: the checksum cannot read it (the reader refuses it before)
        digest = "0" * 64
    return save(tensors, metadata={"mixbits": text, "mixbits_sha256": digest})


def mutations(data: bytes, n: int, seed: int, canary: Path, layout: dict | None = None
              ) -> list[tuple[str, str, bytes, bool]]:
    """``n`` mutated copies of ``data``: (family, edit name, bytes, whether the exporter could write the result).

    ``layout`` (:func:`file_layout` of ``data``) is needed for the ``values`` family.
    """
    r = random.Random(seed)
    edits = manifest_edits(canary)
    _, meta, _ = _split(data)
    out = []
    values = 0
    for i in range(n):
        family = FAMILIES[i % len(FAMILIES)]
        writable = family == "forged"  # a forged manifest may describe another model
        if family == "bytes":
            kind, mutated = _byte_mutation(data, r)
        elif family == "header":
            kind, mutated = _header_mutation(data, r)
        elif family == "values":
            kind, edit, writable = VALUE_EDITS[values % len(VALUE_EDITS)]
            values += 1
            mutated = _value_mutation(data, layout, edit, r)
        else:
            j = i // len(FAMILIES) * 2 + (family == "forged")
            kind, edit = edits[j % len(edits)] if j < 4 * len(edits) else r.choice(edits)
            m = json.loads(meta["mixbits"])
            try:
                text = edit(m, r)
            except (KeyError, IndexError, TypeError, ValueError, StopIteration):
                text = None
            tensor_edit = text if callable(text) else None  # an edit of the group_bits tensor
            if not isinstance(text, str):
                text = json.dumps(m, separators=(",", ":"))
            mutated = _with_manifest(data, text, forged=family == "forged", tensor_edit=tensor_edit)
        out.append((family, kind, mutated, writable))
    return out


# ---- the worker: one process, under a memory limit, loads every case ----------------------------------------

def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS, VmHWM), KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> int | None:
    """Reset this process's peak resident memory (Linux: write 5 to clear_refs); the current RSS in KiB, or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _status_kib("VmRSS")
    except OSError:
        return None


def worker(case_dir: Path, first: int, memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    sys.path.insert(0, str(case_dir))  # the canary module is importable: a recipe that imports it would run it
    import torch

    import mixbits
    from mixbits.commands.inspect import format_summary
    from mixbits.export import describe

    torch.set_num_threads(1)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # (B, C, H, W)
    with torch.no_grad():
        reference = mixbits.load(case_dir / "original.mbits")(x)
    cases = sorted(case_dir.glob("case-*.mbits"))
    for path in cases[first:]:
        result: dict[str, Any] = {"case": path.name, "file_bytes": path.stat().st_size}
        before_kib = _reset_peak_rss()
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            text = format_summary(describe(path))  # what mixbits inspect prints
            result["unsafe_text"] = not all(c == "\n" or c.isprintable() for c in text)  # no Cc, Cf, Cs, Z*
            net = mixbits.load(path)
            with torch.no_grad():
                y = net(x)
            result["outcome"] = "identical" if torch.equal(y, reference) else "different"
            result["finite"] = bool(torch.isfinite(y).all())
        except BaseException as exc:  # noqa: BLE001 -- classify everything, MemoryError and RecursionError included
            result["outcome"] = "library_error" if type(exc).__name__ in LIBRARY_ERRORS else "other_exception"
            result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            result["message_chars"] = len(str(exc))
            result["unsafe_text"] = result.get("unsafe_text", False) or not str(exc).isprintable()
        result["seconds"] = round(time.perf_counter() - t0, 3)
        result["cpu_seconds"] = round(time.process_time() - c0, 3)  # the work, apart from other jobs' load
        if before_kib is not None:  # the case's peak resident memory above what the process held before it
            result["rss_growth_kib"] = max(0, _status_kib("VmHWM") - before_kib)
        print(json.dumps(result), flush=True)
    print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), flush=True)


def run(n: int, seed: int, *, timeout_s: float = 30.0, memory_gib: float = 4.0,
        workdir: str | None = None) -> dict[str, Any]:
    """Write ``n`` mutations, load them in worker subprocesses and count the outcomes."""
    import mixbits

    tmp = tempfile.TemporaryDirectory(dir=workdir)
    case_dir = Path(tmp.name)
    canary = case_dir / "CANARY"
    (case_dir / f"{CANARY_MODULE}.py").write_text(
        f"open({str(canary)!r}, 'w').write('imported')\n\ndef build(**kwargs):\n    open({str(canary)!r}, 'w')\n")
    original = make_original(case_dir / "original.mbits")
    cases = mutations(original.read_bytes(), n, seed, canary, file_layout(original))
    for i, (_, _, data, _) in enumerate(cases):
        (case_dir / f"case-{i:05d}.mbits").write_bytes(data)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(mixbits.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    results: list[dict[str, Any]] = []
    peak_kib = 0
    t0 = time.time()
    while len(results) < n:
        first = len(results)
        proc = subprocess.Popen([sys.executable, __file__, "--worker", str(case_dir), "--first", str(first),
                                 "--memory-gib", str(memory_gib)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=case_dir, text=True)
        assert proc.stdout is not None
        limit = timeout_s + 30.0  # the first case also waits for the imports
        while len(results) < n:
            ready, _, _ = select.select([proc.stdout], [], [], limit)
            line = proc.stdout.readline() if ready else ""
            limit = timeout_s
            if not line:  # a hang, or the worker died (killed by the memory limit, a crash)
                proc.kill()
                proc.wait()
                i = len(results)
                results.append({"case": f"case-{i:05d}.mbits", "outcome": "hang" if not ready else "worker_died",
                                "error": (proc.stderr.read() if proc.stderr else "")[-300:]})
                break
            rec = json.loads(line)
            if "peak_rss_kib" in rec:
                peak_kib = max(peak_kib, rec["peak_rss_kib"])
                continue
            results.append(rec)
        else:
            line = proc.stdout.readline()
            if line:
                peak_kib = max(peak_kib, json.loads(line).get("peak_rss_kib", 0))
            proc.wait()
    seconds = time.time() - t0
    code_executed = int(canary.exists())
    # Positive control: the forged canary recipe with trust_code=True must fire the canary.
    control = case_dir / "control.mbits"
    edit = dict(manifest_edits(canary))["import canary"]
    m = json.loads(_split(original.read_bytes())[1]["mixbits"])
    edit(m, random.Random(0))
    control.write_bytes(_with_manifest(original.read_bytes(), json.dumps(m), forged=True))
    subprocess.run([sys.executable, "-c", "import sys, mixbits; sys.path.insert(0, sys.argv[2]); "
                    "mixbits.load(sys.argv[1], trust_code=True)", str(control), str(case_dir)],
                   env=env, cwd=case_dir, capture_output=True, timeout=120)
    canary_control = canary.exists()
    for rec, (family, kind, _, writable) in zip(results, cases):
        rec["family"], rec["edit"], rec["writable"] = family, kind, writable
        if rec["outcome"] == "different":  # a file the exporter could write for another model, or silent damage
            rec["outcome"] = "forged_other_model" if writable else "wrong_output"
    counts: dict[str, int] = {}
    for rec in results:
        counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
    loaded = [r for r in results if r["outcome"] in ("identical", "forged_other_model", "wrong_output")]
    rejected = [r for r in results if r["outcome"] == "library_error"]
    edits = sorted({(r["family"], r["edit"]) for r in results if r["family"] == "values"}, key=lambda k: k[1])
    summary = {
        "mutations": n, "seed": seed, "counts": counts,
        "code_executed": code_executed,
        "canary_fires_with_trust_code": canary_control,
        "wrong_outputs": counts.get("wrong_output", 0),
        "other_exceptions": counts.get("other_exception", 0) + counts.get("worker_died", 0),
        "hangs": counts.get("hang", 0),
        "non_finite_outputs": sum(1 for r in loaded if r.get("finite") is False),
        "non_finite_outputs_undeclared": sum(1 for r in loaded if r.get("finite") is False
                                             and r["edit"] != "bias -inf declared"),
        "unsafe_text": sum(1 for r in results if r.get("unsafe_text")),
        "value_edits": sum(1 for r in results if r["family"] == "values"),
        "rejections_over_2s": sum(1 for r in rejected if r.get("seconds", 0) > 2.0),
        "slowest_rejection_s": max((r.get("seconds", 0) for r in rejected), default=0.0),
        "most_cpu_rejection_s": max((r.get("cpu_seconds", 0) for r in rejected), default=0.0),
        "slowest_case_s": max((r.get("seconds", 0) for r in results), default=0.0),
        "largest_file_bytes": max((r.get("file_bytes", 0) for r in results), default=0),
        "largest_rss_growth_mib": round(max((r.get("rss_growth_kib", 0) for r in results), default=0) / 1024, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "longest_error_chars": max((rec.get("message_chars", 0) for rec in results), default=0),
        "seconds": round(seconds, 1),
        "by_family": {f: {o: sum(1 for r in results if r["family"] == f and r["outcome"] == o)
                          for o in sorted({r["outcome"] for r in results})}
                      for f in ("bytes", "stale", "forged", "header", "values")},
        "by_value_edit": {k: {"files": sum(1 for r in results if r["edit"] == k and r["family"] == "values"),
                              "exporter_can_write": next(r["writable"] for r in results if r["edit"] == k),
                              **{o: sum(1 for r in results if r["edit"] == k and r["family"] == "values"
                                        and r["outcome"] == o) for o in sorted({r["outcome"] for r in results})},
                              "max_s": max(r.get("seconds", 0) for r in results if r["edit"] == k),
                              "max_cpu_s": max(r.get("cpu_seconds", 0) for r in results if r["edit"] == k),
                              "max_file_bytes": max(r.get("file_bytes", 0) for r in results if r["edit"] == k)}
                          for _, k in edits},
        "cases": [{k: (str(v)[:160] if k == "error" else v) for k, v in r.items()} for r in results],
        "not_library_errors": [r for r in results if r["outcome"] not in ("library_error", "identical",
                                                                          "forged_other_model")][:20],
    }
    tmp.cleanup()
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mutations", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per case before it counts as a hang")
    p.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit of the worker (RLIMIT_AS)")
    p.add_argument("--json", help="write the summary and the environment here")
    p.add_argument("--markdown", help="write the results table here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(Path(args.worker), args.first, int(args.memory_gib * (1 << 30)))
        return
    summary = run(args.mutations, args.seed, timeout_s=args.timeout, memory_gib=args.memory_gib)
    summary["environment"] = provenance()
    summary["load_average"] = os.getloadavg()[0]
    print(json.dumps({k: v for k, v in summary.items() if k not in ("not_library_errors", "cases")}, indent=2))
    for rec in summary["not_library_errors"]:
        print("NOT A LIBRARY ERROR:", rec)
    if args.json:  # one line per case
        head = json.dumps({k: v for k, v in summary.items() if k != "cases"}, indent=2)[:-2]
        cases = ",\n".join("    " + json.dumps(c) for c in summary["cases"])
        Path(args.json).write_text(f'{head},\n  "cases": [\n{cases}\n  ]\n}}\n')
    if args.markdown:
        Path(args.markdown).write_text(markdown(summary, provenance_line()))


OUTCOMES = {
    "library_error": "the library's own error (`MbitsFormatError`, `CodeNotTrustedError`)",
    "identical": "loaded, outputs identical to the original",
    "forged_other_model": "loaded as another model the exporter could write (forged, checksum recomputed)",
    "wrong_output": "**loaded silently with values the exporter cannot write**",
    "other_exception": "**another exception type**",
    "worker_died": "**worker died (memory limit, crash)**",
    "hang": "**hang (no answer in the time limit)**",
}


def markdown(s: dict[str, Any], header: str) -> str:
    """The results file: outcomes, the guarantees, and one row per value edit."""
    rows = [f"| {OUTCOMES.get(o, o)} | {c} |" for o, c in sorted(s["counts"].items(), key=lambda kv: -kv[1])]
    checks = [
        ("code executed (canary module imported, `touch` run)", s["code_executed"]),
        ("other exception types (or a dead worker)", s["other_exceptions"]),
        ("hangs", s["hangs"]),
        ("silent loads of values the exporter cannot write", s["wrong_outputs"]),
        ("non-finite outputs from values no file declares", s["non_finite_outputs_undeclared"]),
        ("non-finite outputs in all (a bias of -inf declared in `float_infinite`, by design)",
         s["non_finite_outputs"]),
        ("`mixbits inspect` text or error messages with control/format characters or surrogates",
         s["unsafe_text"]),
        ("rejections that took over 2 s (describe + load)", s["rejections_over_2s"]),
    ]
    fam = s["by_family"]
    fam_rows = [f"| {f} | {sum(fam[f].values())} | " + " | ".join(str(fam[f].get(o, 0)) for o in
                ("library_error", "identical", "forged_other_model", "wrong_output")) + " |" for f in fam]
    edit_rows = [f"| {k} | {'yes' if v['exporter_can_write'] else 'no'} | {v['files']} | {v.get('library_error', 0)} | "
                 f"{v.get('identical', 0) + v.get('forged_other_model', 0) + v.get('wrong_output', 0)} | "
                 f"{v['max_s']:.2f} | {v['max_cpu_s']:.2f} | {v['max_file_bytes']:,} |"
                 for k, v in s["by_value_edit"].items()]
    return "\n".join([
        "# Fuzzing `mixbits.load` and `mixbits inspect` with hostile and damaged `.mbits` files",
        "",
        header,
        "",
        "One real export (built-in `digits_cnn`, width 8, three of four layers with bits per structure of 3 "
        "channels, every bitwidth 1..32 present, zoo recipe) mutated "
        f"{s['mutations']} times with seed {s['seed']}: byte damage, manifest edits keeping the old checksum, "
        "forged manifest edits (checksum recomputed), tensor-table edits, and "
        f"{s['value_edits']} forged value edits (checksum recomputed: scales, weights, BatchNorm statistics, "
        "structure codes, the key map, 0-d and wrong-dtype tensors, huge counts in small files, hostile names). "
        "Each file is read by `describe` and formatted as `mixbits inspect` prints it, then loaded with "
        "`mixbits.load`, in a worker subprocess under an address-space limit; times are per file, both steps.",
        "",
        "| outcome | files |",
        "|---|---:|",
        *rows,
        "",
        "| guarantee | files |",
        "|---|---:|",
        *[f"| {k} | {v} |" for k, v in checks],
        f"| slowest rejection (wall clock) | {s['slowest_rejection_s']:.2f} s |",
        f"| most CPU time for a rejection | {s['most_cpu_rejection_s']:.2f} s |",
        f"| largest file | {s['largest_file_bytes']:,} B |",
        f"| largest growth of the worker's peak memory in one file | {s['largest_rss_growth_mib']} MiB |",
        f"| peak resident memory of the worker | {s['peak_rss_mib']} MiB |",
        f"| longest error message | {s['longest_error_chars']} characters |",
        f"| wall time | {s['seconds']} s |",
        "",
        "| family | files | library error | identical | another model | silent bad values |",
        "|---|---:|---:|---:|---:|---:|",
        *fam_rows,
        "",
        "Value edits (checksum recomputed). 'Exporter can write' marks edits whose result is a file the exporter "
        "writes for some other model (scales doubled, a zero variance, a declared -inf bias, a channel "
        "permutation by swapped structure codes, a file of 16k one-weight layers, odd names): such a file may "
        "load; every other edit must be refused.",
        "",
        "| edit | exporter can write | files | library error | loaded | slowest (s) | most CPU (s) | largest file (B) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *edit_rows,
        "",
        "Reading the table. A checksum catches damage, not a forger, so a forged file may load when it is a file "
        "the exporter writes for another model: swapped BatchNorm `weight`/`bias` names, doubled scales, a zero "
        "variance, a declared -inf bias (its non-finite outputs are by design: buffers such as attention masks "
        "hold -inf, so the exporter lists such tensors in `float_infinite` and the reader refuses infinities "
        "anywhere else), and swapped structure codes of two equal-size structures (a channel permutation). "
        "Swapped codes of structures whose runs then misalign, and every edit marked 'no', are refused. "
        "A file at the `MAX_TENSORS` bound (16k one-weight layers) is the slowest: it is read twice "
        "(`describe`, then `load`, which refuses it because the model has no such layers). The largest "
        "memory growth is for a 14 MB manifest naming 1.2M tensors, refused before it is parsed into records: "
        "Python holds the file, the header text and the parsed manifest at once (about 3.3x the file). "
        f"Times are on a machine shared with other jobs (load average {s['load_average']:.1f} on "
        f"{os.cpu_count()} cores when the run ended).",
        "",
    ])


if __name__ == "__main__":
    main()
