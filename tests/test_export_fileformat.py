"""The .mbits file: one short MbitsFormatError for every kind of damage, atomic writes, no pickle, no code."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mixbits import export_model, load
from mixbits.export import FORMAT_VERSION, CodeNotTrustedError, MbitsFormatError, describe, read_mbits
from mixbits.export import fileformat, writer
from mixbits.quant import quantize_hard

from ._export_nets import TinyResNet, prepared


@pytest.fixture
def good(tmp_path):
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: [1, 3, 8, 16, 32][i % 5])
    path = tmp_path / "good.mbits"
    export_model(model, space, path, import_path="tests._export_nets:tiny_resnet", model_kwargs={"width": 4})
    return path


def _rewrite_manifest(src, dst, change, *, rehash=True):
    """Write ``dst``: the file ``src`` with its manifest passed through ``change``.

    ``rehash``: recompute the checksum (a consistent forgery), else keep the old one (damage).
    """
    from safetensors.torch import load as st_load, save

    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    manifest = json.loads(meta["mixbits"])
    change(manifest)
    text, tensors = json.dumps(manifest), st_load(data)
    digest = fileformat.checksum(text, tensors) if rehash else meta["mixbits_sha256"]
    dst.write_bytes(save(tensors, metadata={"mixbits": text, "mixbits_sha256": digest}))
    return dst


def test_good_file_reads(good):
    f = read_mbits(good)
    assert f.manifest["format_version"] == FORMAT_VERSION == 4
    assert f.manifest["scale_dtype"] == "float16" and f.manifest["bit_order"] == "little"
    assert set(f.blobs) == {"codes", "scales", "half", "float", "group_bits"}
    assert f.blobs["group_bits"].numel() == 0 and "layer_groups" not in f.manifest  # no layer with structures
    assert f.file_bytes == good.stat().st_size


def test_empty_file_says_so(tmp_path):
    (tmp_path / "empty.mbits").write_bytes(b"")
    with pytest.raises(MbitsFormatError, match=r"is not a valid \.mbits file: the file is empty \(0 bytes\); "
                                               r"export the model again"):
        read_mbits(tmp_path / "empty.mbits")


@pytest.mark.parametrize("keep", [5, 8, 100, -1, -7])
def test_truncated(good, tmp_path, keep):
    data = good.read_bytes()
    bad = tmp_path / "cut.mbits"
    bad.write_bytes(data[:keep] if keep >= 0 else data[:keep])
    with pytest.raises(ValueError, match="not a valid .mbits file: truncated or corrupted"):
        read_mbits(bad)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        load(bad)


def test_flipped_data_byte_fails_the_checksum(good, tmp_path):
    data = bytearray(good.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor's data
    bad = tmp_path / "flip.mbits"
    bad.write_bytes(bytes(data))
    with pytest.raises(MbitsFormatError, match="checksum mismatch: the manifest or the data are corrupted"):
        read_mbits(bad)
    with pytest.raises(ValueError, match="checksum mismatch"):
        describe(bad)


def test_damaged_header(good, tmp_path):
    data = bytearray(good.read_bytes())
    data[12] = ord("}")  # breaks the header JSON
    bad = tmp_path / "hdr.mbits"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a valid .mbits file"):
        read_mbits(bad)


def test_garbage_and_plain_safetensors(tmp_path):
    (tmp_path / "g.mbits").write_bytes(b"PK\x03\x04 this is a zip, not a model" * 10)
    with pytest.raises(ValueError, match="truncated or corrupted"):
        read_mbits(tmp_path / "g.mbits")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="without a mixbits manifest"):
        read_mbits(tmp_path / "plain.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_mbits(tmp_path / "none.mbits")


def test_unknown_format_version(good, tmp_path):
    newer = _rewrite_manifest(good, tmp_path / "v5.mbits", lambda m: m.update(format_version=5))
    with pytest.raises(MbitsFormatError, match="format version 5, but this mixbits reads versions 2, 3 and 4; upgrade"):
        read_mbits(newer)
    odd = _rewrite_manifest(good, tmp_path / "vx.mbits", lambda m: m.update(format_version="one"))
    with pytest.raises(MbitsFormatError, match="format version 'one', but this mixbits reads versions 2, 3 and 4$"):
        load(odd, trust_code=True)
    for fake in (True, 2.0):  # a bool or a float is not a version
        with pytest.raises(MbitsFormatError, match=f"format version {fake!r}, but"):
            read_mbits(_rewrite_manifest(good, tmp_path / "vb.mbits", lambda m: m.update(format_version=fake)))


def test_version_1_file_asks_for_a_new_export(good, tmp_path):
    from safetensors.torch import load as st_load, save

    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    manifest = json.loads(json.loads(data[8:8 + n])["__metadata__"]["mixbits"])
    manifest["format_version"] = 1
    old = tmp_path / "v1.mbits"
    old.write_bytes(save(st_load(data), metadata={"mixbits": json.dumps(manifest)}))  # version 1: no sha256
    with pytest.raises(MbitsFormatError,
                       match="format version 1, but this mixbits reads versions 2, 3 and 4; export it again"):
        read_mbits(old)


@pytest.mark.parametrize("change", [
    lambda m: m["floats"][0][1].reverse(),  # BatchNorm names swapped: weight <-> running_var...
    lambda m: m["layers"][0].__setitem__(0, "stem2"),
    lambda m: m.update(promised_model_bits=1),
])
def test_any_manifest_edit_fails_the_checksum(good, tmp_path, change):
    bad = _rewrite_manifest(good, tmp_path / "edit.mbits", change, rehash=False)
    with pytest.raises(MbitsFormatError, match="checksum mismatch"):
        load(bad, trust_code=True)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(model={"import": "os:system", "kwargs": {"command": "touch CANARY"}}), "would run that code"),
    (lambda m: m.update(model={"zoo": "os:system", "kwargs": {"command": "touch CANARY"}}), "names code"),
    (lambda m: m.update(model={"zoo": "tests._export_nets:tiny_resnet", "kwargs": {}}), "trust_code=True"),
])
def test_recipes_that_name_code_are_refused(good, tmp_path, change, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = _rewrite_manifest(good, tmp_path / "code.mbits", change)
    with pytest.raises(CodeNotTrustedError, match=message):
        load(bad)
    assert not (tmp_path / "CANARY").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"in_channels": 3, "num_classes": 10, "input_size": 8, "width": 3000}, "shapes differ"),
    ({"in_channels": 3, "num_classes": 10, "input_size": 8, "width": 10 ** 9}, "cannot be built"),
    ({"in_channels": 3, "num_classes": 10, "input_size": 8, "width": -5}, "cannot be built"),
    ({"in_channels": 3, "num_classes": 10, "input_size": 8, "nonsense": 1}, "cannot be built"),
    ({"in_channels": 3, "num_classes": 10, "input_size": 8, "width": 10 ** 40}, "malformed model recipe"),
    ({"in_channels": [[[[3]]]]}, "malformed model recipe"),
])
def test_crafted_zoo_recipe_allocates_nothing(tmp_path, kwargs, message):
    import resource
    import time

    from mixbits.models import create_model

    model = create_model("digits_cnn", in_channels=3, num_classes=10, input_size=8, width=4)
    space = __import__("mixbits").prepare_(model, __import__("mixbits").PrepareConfig(candidates=(2, 32)))
    space.fix_({layer.name: 2 for layer in space.layers})
    good = tmp_path / "zoo.mbits"
    export_model(model, space, good, zoo="digits_cnn",
                 model_kwargs={"in_channels": 3, "num_classes": 10, "input_size": 8, "width": 4})
    assert isinstance(load(good), type(create_model("digits_cnn", in_channels=3, num_classes=10, input_size=8)))
    bad = _rewrite_manifest(good, tmp_path / "wide.mbits", lambda m: m["model"].update(kwargs=kwargs))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.time()
    with pytest.raises(MbitsFormatError, match=message) as info:
        load(bad)
    assert time.time() - t0 < 2 and resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50_000  # KiB
    assert len(str(info.value)) < 400


def test_hostile_manifests_give_short_errors_naming_the_file(good, tmp_path):
    cases = {
        "deep": lambda m: m.update(model={"zoo": "digits_cnn", "kwargs": {"x": json.loads("[" * 50000 + "]" * 50000)}}
                                   if False else None) or m.__setitem__("layers", json.loads("[" * 900 + "]" * 900)),
        "long": lambda m: m["layers"][0].__setitem__(0, "x" * 2_000_000),
        "digits": lambda m: m.update(promised_model_bits=10 ** 4000),
        "dup": lambda m: m["floats"].append(m["floats"][0]),
    }
    for name, change in cases.items():
        bad = _rewrite_manifest(good, tmp_path / f"{name}.mbits", change)
        with pytest.raises(MbitsFormatError) as info:
            load(bad, trust_code=True)
        assert f"{name}.mbits" in str(info.value) and len(str(info.value)) < 400, (name, str(info.value)[:500])
    # a 5000-digit integer and a deeply nested manifest as raw text, with a matching checksum
    from safetensors.torch import load as st_load, save

    tensors = st_load(good.read_bytes())
    for name, text in {"bigint": '{"format_version": 2, "x": ' + "9" * 5000 + "}",
                       "nested": "[" * 100_000 + "]" * 100_000}.items():
        path = tmp_path / f"{name}.mbits"
        path.write_bytes(save(tensors, metadata={"mixbits": text, "mixbits_sha256": fileformat.checksum(text, tensors)}))
        with pytest.raises(MbitsFormatError, match=f"{name}.mbits.*not valid JSON") as info:
            describe(path)
        assert len(str(info.value)) < 400


@pytest.mark.parametrize("change, message", [
    (lambda m: m["layers"][0].__setitem__(3, 9), "unsupported bits 9"),
    (lambda m: m["layers"][0].__setitem__(2, [4, -3]), "bad shape"),
    (lambda m: m["layers"][1].__setitem__(2, [4, 4, 3, 4]), "tensor 'codes' holds"),
    (lambda m: m["floats"].pop(), "tensor 'float' holds"),
    (lambda m: m.pop("layers"), "lacks its 'layers' or 'floats' table"),
    (lambda m: m.update(layer_fields=["bits", "name"]), "table columns"),
    (lambda m: m.update(scale_dtype="bfloat16"), "unsupported scale dtype 'bfloat16'"),
    (lambda m: m.update(input_shape=[3, 100000, 100000]), "larger than one sample"),
])
def test_inconsistent_manifest(good, tmp_path, change, message):
    bad = _rewrite_manifest(good, tmp_path / "bad.mbits", change)
    with pytest.raises(ValueError, match=message):
        read_mbits(bad)


def test_reading_never_unpickles(good, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    net = load(good, trust_code=True)
    assert isinstance(net, TinyResNet)


def test_interrupted_write_leaves_the_old_file(good, tmp_path, monkeypatch):
    before = good.read_bytes()
    model, space, _ = prepared(TinyResNet(width=4), lambda i, l: 2)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(model, space, good)
    assert good.read_bytes() == before  # the previous export is intact
    with pytest.raises(KeyboardInterrupt):
        export_model(model, space, tmp_path / "new.mbits")
    assert sorted(os.listdir(tmp_path)) == ["good.mbits"]  # no half file, no temporary left behind


def test_inspect_into_a_closed_pipe_exits_quietly(good):
    import subprocess
    import sys

    import mixbits

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(mixbits.__file__)),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "mixbits", "inspect", "--json", str(good)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the first line, like `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Broken pipe" not in err and "Traceback" not in err, err


def test_two_bit_layers_round_trip_with_four_levels(tmp_path):
    """2-bit codes are four levels; the file reproduces quantize_hard exactly and stores 2 bits a weight."""
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: 2)
    path = tmp_path / "two.mbits"
    export_model(model, space, path, import_path="tests._export_nets:tiny_resnet", model_kwargs={"width": 4})
    f = read_mbits(path)
    state = fileformat.decode_state_dict(f)
    counts = []
    for rec in f.layers:
        assert rec.bits == 2
        w = space.float_weight(rec.name).detach()
        got = state[rec.state_keys[0]]
        assert torch.equal(got, quantize_hard(w, 2))
        counts += [len(row.unique()) for row in got.reshape(got.shape[0], -1)]
    assert max(counts) == 4  # four levels in a channel, not the three of a ternary quantizer


def test_version_3_file_with_two_bit_layers_asks_for_a_new_export(tmp_path):
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: [2, 8][i % 2])
    path = tmp_path / "two.mbits"
    export_model(model, space, path, import_path="tests._export_nets:tiny_resnet", model_kwargs={"width": 4})
    old = _rewrite_manifest(path, tmp_path / "v3.mbits", lambda m: m.update(format_version=3))
    with pytest.raises(MbitsFormatError, match="2-bit layers .* ternary levels of older mixbits releases; .*export it again"):
        read_mbits(old)
