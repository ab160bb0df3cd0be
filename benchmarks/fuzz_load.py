"""Fuzz ``mixbits.load`` with mutations of a real exported ``.mbits`` file.

One real file (the built-in ``digits_cnn`` at mixed 1..32 bits, three of its four layers
with bits per structure of 3 output channels, exported with its zoo recipe; format
version 3) is mutated N times, with a fixed seed:

- ``bytes``: bit flips, random bytes, truncation, appended or deleted or repeated spans;
- ``stale``: JSON edits of the manifest (and edits of the ``group_bits`` tensor) that keep
  the old checksum (damage, hand edits);
- ``forged``: the same edits with the checksum recomputed (a forger's file);
- ``header``: edits of the safetensors tensor table (dtypes, shapes, offsets), checksum kept.

The edits include the attacks of issue 10: recipes that name ``os:system`` or a canary
module, widths of 3000 and 8000, swapped BatchNorm names, a deeply nested manifest,
2 MB layer names, a 5000-digit integer, ``format_version`` true or 1.0; and edits of the
structures: bad group sizes, ``layer_groups`` dropped or naming no layer, a version 2
claim, structure codes out of range, non-zero padding nibbles.

Each file is loaded (and described, as ``mixbits inspect`` does) in a worker
subprocess under a memory limit; a case that gives no answer within the time limit
is a hang (the worker is restarted). Every outcome must be the library's own error
(``MbitsFormatError`` or ``CodeNotTrustedError``) or a model whose outputs equal
the original's; a forged file may also load as the other model it describes.
A canary module and ``touch`` commands prove that no code the file names ran.

    python benchmarks/fuzz_load.py --mutations 400 --json benchmarks/results/fuzz_load.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

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


def mutations(data: bytes, n: int, seed: int, canary: Path) -> list[tuple[str, str, bytes]]:
    """``n`` mutated copies of ``data``: (family, edit name, bytes)."""
    r = random.Random(seed)
    edits = manifest_edits(canary)
    _, meta, _ = _split(data)
    out = []
    for i in range(n):
        family = ["bytes", "stale", "forged", "header"][i % 4]
        if family == "bytes":
            kind, mutated = _byte_mutation(data, r)
        elif family == "header":
            kind, mutated = _header_mutation(data, r)
        else:
            kind, edit = edits[(i // 4) % len(edits)] if i < 8 * len(edits) else r.choice(edits)
            m = json.loads(meta["mixbits"])
            try:
                text = edit(m, r)
            except (KeyError, IndexError, TypeError, ValueError, StopIteration):
                text = None
            tensor_edit = text if callable(text) else None  # an edit of the group_bits tensor
            if not isinstance(text, str):
                text = json.dumps(m, separators=(",", ":"))
            mutated = _with_manifest(data, text, forged=family == "forged", tensor_edit=tensor_edit)
        out.append((family, kind, mutated))
    return out


# ---- the worker: one process, under a memory limit, loads every case ----------------------------------------

def worker(case_dir: Path, first: int, memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    sys.path.insert(0, str(case_dir))  # the canary module is importable: a recipe that imports it would run it
    import torch

    import mixbits
    from mixbits.export import describe

    torch.set_num_threads(1)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))  # (B, C, H, W)
    with torch.no_grad():
        reference = mixbits.load(case_dir / "original.mbits")(x)
    cases = sorted(case_dir.glob("case-*.mbits"))
    for path in cases[first:]:
        result: dict[str, Any] = {"case": path.name}
        try:
            describe(path)
            net = mixbits.load(path)
            with torch.no_grad():
                y = net(x)
            result["outcome"] = "identical" if torch.equal(y, reference) else "different"
        except BaseException as exc:  # noqa: BLE001 -- classify everything, MemoryError and RecursionError included
            result["outcome"] = "library_error" if type(exc).__name__ in LIBRARY_ERRORS else "other_exception"
            result["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            result["message_chars"] = len(str(exc))
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
    cases = mutations(original.read_bytes(), n, seed, canary)
    for i, (_, _, data) in enumerate(cases):
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
    for rec, (family, kind, _) in zip(results, cases):
        rec["family"], rec["edit"] = family, kind
        if rec["outcome"] == "different":  # a forged file may describe another model; anything else is silent damage
            rec["outcome"] = "forged_other_model" if family == "forged" else "wrong_output"
    counts: dict[str, int] = {}
    for rec in results:
        counts[rec["outcome"]] = counts.get(rec["outcome"], 0) + 1
    summary = {
        "mutations": n, "seed": seed, "counts": counts,
        "code_executed": code_executed,
        "canary_fires_with_trust_code": canary_control,
        "wrong_outputs": counts.get("wrong_output", 0),
        "other_exceptions": counts.get("other_exception", 0) + counts.get("worker_died", 0),
        "hangs": counts.get("hang", 0),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "longest_error_chars": max((rec.get("message_chars", 0) for rec in results), default=0),
        "seconds": round(seconds, 1),
        "by_family": {f: {o: sum(1 for r in results if r["family"] == f and r["outcome"] == o)
                          for o in sorted({r["outcome"] for r in results})} for f in ("bytes", "stale", "forged", "header")},
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
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(Path(args.worker), args.first, int(args.memory_gib * (1 << 30)))
        return
    summary = run(args.mutations, args.seed, timeout_s=args.timeout, memory_gib=args.memory_gib)
    import torch

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    summary["environment"] = {"command": "python " + " ".join(sys.argv), "commit": commit,
                              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
                              "torch": torch.__version__}
    print(json.dumps({k: v for k, v in summary.items() if k not in ("not_library_errors", "cases")}, indent=2))
    for rec in summary["not_library_errors"]:
        print("NOT A LIBRARY ERROR:", rec)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
