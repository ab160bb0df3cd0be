"""The .mbits file: a clear ValueError for every kind of damage, atomic writes, no pickle."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mixbits import export_model, load
from mixbits.export import FORMAT_VERSION, describe, read_mbits
from mixbits.export import fileformat

from ._export_nets import TinyResNet, prepared


@pytest.fixture
def good(tmp_path):
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: [1, 3, 8, 16, 32][i % 5])
    path = tmp_path / "good.mbits"
    export_model(model, space, path, import_path="tests._export_nets:tiny_resnet", model_kwargs={"width": 4})
    return path


def _rewrite_manifest(src, dst, change):
    """Write ``dst``: the file ``src`` with its manifest passed through ``change`` (checksums kept)."""
    from safetensors.torch import load as st_load, save

    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    manifest = json.loads(json.loads(data[8:8 + n])["__metadata__"]["mixbits"])
    change(manifest)
    dst.write_bytes(save(st_load(data), metadata={"mixbits": json.dumps(manifest)}))
    return dst


def test_good_file_reads(good):
    f = read_mbits(good)
    assert f.manifest["format_version"] == FORMAT_VERSION == 1
    assert f.manifest["scale_dtype"] == "float16" and f.manifest["bit_order"] == "little"
    assert set(f.blobs) == {"codes", "scales", "half", "float"}
    assert f.file_bytes == good.stat().st_size


@pytest.mark.parametrize("keep", [0, 5, 8, 100, -1, -7])
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
    with pytest.raises(ValueError, match="checksum mismatch in '.*': the data are corrupted"):
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
    newer = _rewrite_manifest(good, tmp_path / "v2.mbits", lambda m: m.update(format_version=2))
    with pytest.raises(ValueError, match="format version 2, but this mixbits reads version 1; upgrade mixbits"):
        read_mbits(newer)
    odd = _rewrite_manifest(good, tmp_path / "vx.mbits", lambda m: m.update(format_version="one"))
    with pytest.raises(ValueError, match="format version 'one', but this mixbits reads version 1$"):
        load(odd)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["layers"][0].__setitem__(3, 9), "unsupported bits 9"),
    (lambda m: m["layers"][0].__setitem__(2, [4, -3]), "bad shape"),
    (lambda m: m["layers"][1].__setitem__(2, [4, 4, 3, 4]), "tensor 'codes' holds"),
    (lambda m: m["floats"].pop(), "tensor 'float' holds"),
    (lambda m: m.pop("layers"), "lacks its 'layers' or 'floats' table"),
    (lambda m: m.update(layer_fields=["bits", "name"]), "table columns"),
    (lambda m: m.update(scale_dtype="bfloat16"), "unsupported scale dtype 'bfloat16'"),
    (lambda m: m.pop("crc32"), "lacks its crc32"),
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
    net = load(good)
    assert isinstance(net, TinyResNet)


def test_interrupted_write_leaves_the_old_file(good, tmp_path, monkeypatch):
    before = good.read_bytes()
    model, space, _ = prepared(TinyResNet(width=4), lambda i, l: 2)

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(fileformat.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_model(model, space, good)
    assert good.read_bytes() == before  # the previous export is intact
    with pytest.raises(KeyboardInterrupt):
        export_model(model, space, tmp_path / "new.mbits")
    assert sorted(os.listdir(tmp_path)) == ["good.mbits"]  # no half file, no temporary left behind
