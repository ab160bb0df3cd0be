"""Format version 3: bits per structure (runs of output channels) in the .mbits file.

Round trips at mixed bits inside one layer (1, 3, 8, 16 and 32 together), a Hugging Face-style
layer with its channels on dim 1, exact equality with ``quantize_hard`` per structure, sizes equal
to the cost model's to the byte (up to each run's padding), a pinned byte layout, version 2 files
still read, damage to the structure codes or ``layer_groups`` as MbitsFormatError, and the whole
path ``prepare_(granularity=...)`` -> ``export_model`` -> ``load``.
"""

from __future__ import annotations

import base64
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixbits import PrepareConfig, export_model, load, prepare_
from mixbits.cost import LayerInfo
from mixbits.export import MbitsFormatError, describe, read_mbits, size_bound_bytes
from mixbits.export import fileformat, records
from mixbits.export.fileformat import (FloatRecord, LayerRecord, decode_state_dict, encode_tensors, pack_group_bits,
                                       unpack_group_bits, write_mbits)
from mixbits.export.pack import pack_codes, packed_nbytes
from mixbits.quant import channels_first, quantize_hard, weight_codes

# ---- a tiny model of records: one conv-like layer at 1, 3, 8, 16 and 32 bits, an HF-style layer ----------

CONV_BITS = (1, 3, 8, 16, 32, 3)  # 6 structures of 2 channels
HF_BITS = (2, 16, 5)  # channels on dim 1: 7 channels in structures of 3, 3 and 1


def _weights():
    g = torch.Generator().manual_seed(3)
    conv = torch.randn(12, 3, 3, 3, generator=g)  # (C_out=12, C_in, k, k)
    hf = torch.randn(5, 7, generator=g)  # (in=5, out=7): Hugging Face Conv1D layout
    plain = torch.randn(4, 6, generator=g)  # one bitwidth
    bias = torch.randn(12, generator=g)
    return conv, hf, plain, bias


def _records(conv_bits=CONV_BITS, hf_bits=HF_BITS):
    return [LayerRecord(name="conv", aliases=(), kind="Conv2d", shape=(12, 3, 3, 3), bits=conv_bits, group_size=2),
            LayerRecord(name="hf", aliases=(), kind="Conv1D", shape=(5, 7), bits=hf_bits, channel_dim=1,
                        group_size=3),
            LayerRecord(name="plain", aliases=(), kind="Linear", shape=(4, 6), bits=4)]


def _manifest(layers, floats, version=fileformat.FORMAT_VERSION):
    return {"format_version": version, "mixbits_version": "test", "scale_dtype": "float16", "bit_order": "little",
            "model": None, "input_shape": None, **fileformat.records_to_json(layers, floats),
            "promised_model_bits": None, "float_model_bits": None}


@pytest.fixture
def grouped_file(tmp_path):
    conv, hf, plain, bias = _weights()
    layers = list(zip(_records(), (conv, hf, plain)))
    floats = [(FloatRecord(key="conv.bias", shape=(12,)), bias)]
    path = tmp_path / "g.mbits"
    write_mbits(path, encode_tensors(layers, floats), _manifest([r for r, _ in layers], [r for r, _ in floats]))
    return path


def _rewrite(src, dst, change=None, tensors_change=None, *, rehash=True):
    """``src`` with its manifest and/or tensors edited; ``rehash`` recomputes the checksum (a forgery)."""
    from safetensors.torch import load as st_load, save

    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:8 + n])["__metadata__"]
    manifest, tensors = json.loads(meta["mixbits"]), st_load(data)
    if change is not None:
        change(manifest)
    if tensors_change is not None:
        tensors_change(tensors)
    text = json.dumps(manifest)
    digest = fileformat.checksum(text, tensors) if rehash else meta["mixbits_sha256"]
    dst.write_bytes(save(tensors, metadata={"mixbits": text, "mixbits_sha256": digest}))
    return dst


# ---- the codes of the bitwidths ----------------------------------------------------------------------------

def test_group_bits_nibbles_are_pinned():
    # codes are indices in (1..8, 16, 32): 1->0, 3->2, 8->7, 16->8, 32->9; low nibble first, odd count padded with 0
    assert pack_group_bits([1, 3, 8, 16, 32]).tolist() == [0x20, 0x87, 0x09]
    assert pack_group_bits([2, 16, 5]).tolist() == [0x81, 0x04]
    assert unpack_group_bits(torch.tensor([0x20, 0x87, 0x09], dtype=torch.uint8), 5) == (1, 3, 8, 16, 32)
    assert unpack_group_bits(torch.tensor([0x98], dtype=torch.uint8), 2) == (16, 32)  # low nibble: the first
    with pytest.raises(ValueError, match="padding nibble"):
        unpack_group_bits(torch.tensor([0x20, 0x87, 0x19], dtype=torch.uint8), 5)
    with pytest.raises(ValueError, match="structure code 10 names no bitwidth"):
        unpack_group_bits(torch.tensor([0xA0], dtype=torch.uint8), 2)
    with pytest.raises(ValueError, match="need 2 bytes, got 1"):
        unpack_group_bits(torch.tensor([0x20], dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match="unsupported bitwidths"):
        pack_group_bits([4, 12])


def test_records_are_canonical_and_checked():
    rec = LayerRecord(name="l", aliases=(), kind="Linear", shape=(5, 4), bits=4, group_size=2)
    assert rec.bits == (4, 4, 4) and rec.group_channels == (2, 2, 1) and rec.index_bytes == 2
    listed = LayerRecord(name="l", aliases=(), kind="Linear", shape=(5, 4), bits=[1, 2, 8], group_size=2)
    assert listed.bits == (1, 2, 8)
    assert LayerRecord(name="l", aliases=(), kind="Linear", shape=(5, 4), bits=(3,)).bits == 3
    with pytest.raises(ValueError, match="has 3 structure"):
        LayerRecord(name="l", aliases=(), kind="Linear", shape=(5, 4), bits=(1, 2), group_size=2)
    with pytest.raises(ValueError, match="group_size 5 must be 0"):
        LayerRecord(name="l", aliases=(), kind="Linear", shape=(5, 4), bits=2, group_size=5)


# ---- round trip, layout, sizes -----------------------------------------------------------------------------

def test_round_trip_equals_quantize_hard_per_structure(grouped_file):
    conv, hf, plain, bias = _weights()
    f = read_mbits(grouped_file)
    assert f.manifest["format_version"] == 4 and f.manifest["layer_groups"] == {"conv": 2, "hf": 3}
    assert [row[3] for row in f.manifest["layers"]] == [0, 0, 4]  # a layer with structures has bits 0 in its row
    assert [(r.name, r.bits, r.group_size) for r in f.layers] == [("conv", CONV_BITS, 2), ("hf", HF_BITS, 3),
                                                                   ("plain", 4, 0)]
    state = decode_state_dict(f)
    want = torch.empty_like(conv)
    for g, b in enumerate(CONV_BITS):
        want[2 * g:2 * g + 2] = quantize_hard(conv, b)[2 * g:2 * g + 2]
    assert torch.equal(state["conv.weight"], want)
    assert torch.equal(state["conv.weight"][8:10], conv[8:10])  # 32 bits: the float values
    assert not torch.equal(state["conv.weight"][6:8], conv[6:8])  # 16 bits: rounded to half
    want = torch.empty_like(hf)
    for (lo, hi), b in zip([(0, 3), (3, 6), (6, 7)], HF_BITS):
        want[:, lo:hi] = quantize_hard(hf, b, channel_dim=1)[:, lo:hi]
    assert torch.equal(state["hf.weight"], want) and state["hf.weight"].shape == (5, 7)
    assert torch.equal(state["plain.weight"], quantize_hard(plain, 4))
    assert torch.equal(state["conv.bias"], bias)


def test_round_trip_every_bitwidth_in_one_layer():
    g = torch.Generator().manual_seed(11)
    w = torch.randn(21, 4, 2, generator=g)  # 21 channels, structures of 2 (the last one 1 channel)
    bits = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 1)
    rec = LayerRecord(name="x", aliases=(), kind="Conv1d", shape=(21, 4, 2), bits=bits, group_size=2)
    blobs = encode_tensors([(rec, w)], [])
    f = fileformat.MbitsFile(path="mem", manifest={}, layers=(rec,), floats=(),
                             blobs={n: blobs.get(n, torch.zeros(0, dtype=d)) for n, d in fileformat.BLOBS.items()},
                             file_bytes=0, header_bytes=0)
    assert {n: t.numel() for n, t in blobs.items()} == records.expected_blob_sizes((rec,), ())  # minus empty ones
    out = decode_state_dict(f)["x.weight"]
    for s, b in enumerate(bits):
        assert torch.equal(out[2 * s:2 * s + 2], quantize_hard(w, b)[2 * s:2 * s + 2]), b


def test_byte_layout_is_pinned(grouped_file):
    conv, hf, plain, _ = _weights()
    f = read_mbits(grouped_file)
    # group_bits: conv (1,3,8,16,32,3) -> codes 0,2,7,8,9,2; hf (2,16,5) -> 1,8,4 (+ a zero padding nibble)
    assert f.blobs["group_bits"].tolist() == [0x20, 0x87, 0x29, 0x81, 0x04]
    # conv's codes: one run per 1..8 bitwidth, ascending, channels in order:
    # 1 bit (channels 0, 1), 3 bits (2, 3, 10, 11), 8 bits (4, 5)
    runs = [(1, [0, 1]), (3, [2, 3, 10, 11]), (8, [4, 5])]
    parts, scales = [], []
    for b, rows in runs:
        codes, scale = weight_codes(conv[rows], b)
        parts.append(pack_codes(codes, b))
        scales.append(scale.half())
    hf_cf = channels_first(hf, 1)  # (7, 5)
    for b, rows in [(2, [0, 1, 2]), (5, [6])]:
        codes, scale = weight_codes(hf_cf[rows], b)
        parts.append(pack_codes(codes, b))
        scales.append(scale.half())
    codes, scale = weight_codes(plain, 4)
    parts.append(pack_codes(codes, 4))
    scales.append(scale.half())
    assert [p.numel() for p in parts] == [7, 41, 54, 4, 4, 12]  # 54 bits -> 7 bytes, 324 bits -> 41 bytes ...
    assert torch.equal(f.blobs["codes"], torch.cat(parts))
    assert torch.equal(f.blobs["scales"], torch.cat(scales))
    # 16 bits: conv channels 6, 7 then hf channels 3..5 (channels first); 32 bits: conv channels 8, 9, then floats
    assert torch.equal(f.blobs["half"], torch.cat([conv[6:8].half().reshape(-1), hf_cf[3:6].half().reshape(-1)]))
    assert torch.equal(f.blobs["float"][:54], conv[8:10].reshape(-1))


def test_stored_size_is_the_cost_models_to_the_byte(grouped_file):
    f = read_mbits(grouped_file)
    total_padding = 0
    for rec in f.layers:
        info = LayerInfo(name=rec.name, aliases=(), kind=rec.kind, shape=rec.shape,
                         candidates=(1, 2, 3, 4, 5, 8, 16, 32), channel_dim=rec.channel_dim,
                         group_size=rec.group_size)
        per = rec.num_weights // rec.num_channels
        padding = sum(8 * packed_nbytes(c * per, b) - c * per * b for b, c in rec.bits_channels.items() if b <= 8)
        assert 8 * rec.stored_bytes == info.size_bits(rec.bits) + padding
        assert padding <= 7 * len([b for b in rec.bits_channels if b <= 8])
        total_padding += padding
    conv, hf, plain = f.layers
    # conv: 7 + 41 + 54 code bytes, 8 scales, 54 halves, 54 floats, 3 index bytes; the cost model: 3554 bits
    assert (conv.stored_bytes, LayerInfo(name="c", aliases=(), kind="Conv2d", shape=(12, 3, 3, 3), candidates=(1,),
                                         group_size=2).size_bits(CONV_BITS)) == (445, 3554)
    assert (hf.stored_bytes, plain.stored_bytes) == (48, 20)  # hf: 4 + 4 code bytes, 4 scales, 15 halves, 2 index
    data_bytes = sum(t.numel() * t.element_size() for t in f.blobs.values())
    assert data_bytes == sum(r.stored_bytes for r in f.layers) + 4 * 12  # and the float bias
    assert f.file_bytes == f.header_bytes + data_bytes
    assert total_padding == 6 + 9 + 0


def test_describe_and_inspect_show_structures(grouped_file, capsys):
    from mixbits.cli import main
    from mixbits.commands.inspect import bits_text

    info = describe(grouped_file)
    conv, hf, plain = info["layers"]
    assert conv["bits"] == list(CONV_BITS) and conv["group_size"] == 2 and conv["structures"] == 6
    assert conv["structure_bits"] == {1: 1, 3: 2, 8: 1, 16: 1, 32: 1}
    assert conv["average_bits"] == (54 * 1 + 108 * 3 + 54 * 8 + 54 * 16 + 54 * 32) / 324 == 10.5
    assert (plain["bits"], plain["group_size"], plain["structures"], plain["average_bits"]) == (4, 0, 1, 4.0)
    assert bits_text(conv) == "mixed 1-32 (mean 10.50) 1:1 3:2 8:1 16:1 32:1"
    assert bits_text(hf) == "mixed 2-16 (mean 8.43) 2:1 5:1 16:1"  # (3*2 + 3*16 + 1*5) / 7 channels
    assert bits_text({"bits": [4, 4, 4], "average_bits": 4.0}) == "4 4:3"
    assert main(["inspect", str(grouped_file)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["layer", "kind", "shape", "bits", "group_size", "structures", "bytes"]
    assert lines[1].split() == ["conv", "Conv2d", "12x3x3x3", "mixed", "1-32", "(mean", "10.50)", "1:1", "3:2", "8:1",
                                "16:1", "32:1", "2", "6", "445"]
    assert lines[3].split() == ["plain", "Linear", "4x6", "4", "-", "1", "20"]
    assert main(["inspect", "--json", str(grouped_file)]) == 0
    data = json.loads(capsys.readouterr().out)  # still valid JSON
    assert data["layers"][1]["bits"] == [2, 16, 5] and data["layers"][1]["structure_bits"] == {"2": 1, "5": 1, "16": 1}


def test_header_bound_holds_for_layers_with_structures(grouped_file):
    f = read_mbits(grouped_file)
    floats = list(f.floats)
    bound = fileformat.header_bytes_bound(f.layers, floats, 10 ** 9)
    flat = [LayerRecord(name=r.name, aliases=r.aliases, kind=r.kind, shape=r.shape, bits=32, channel_dim=r.channel_dim)
            for r in f.layers]
    assert bound > fileformat.header_bytes_bound(flat, floats, 10 ** 9)  # layer_groups and group_bits counted
    # the widest file these records can give: every structure at 32 bits, promise and sizes at their widest
    widest = [(LayerRecord(name=r.name, aliases=r.aliases, kind=r.kind, shape=r.shape, bits=32,
                           channel_dim=r.channel_dim, group_size=r.group_size), torch.zeros(r.shape)) for r in f.layers]
    manifest = {**_manifest([r for r, _ in widest], floats), "promised_model_bits": 10 ** 9,
                "float_model_bits": 10 ** 9}
    tensors = encode_tensors(widest, [(r, torch.zeros(r.shape)) for r in floats])
    _, header = write_mbits(f.path + ".wide", tensors, manifest)
    assert max(f.header_bytes, header) <= bound < max(f.header_bytes, header) + fileformat.RECIPE_ALLOWANCE_BYTES + 200


# ---- version 2 -------------------------------------------------------------------------------------------

# Written by mixbits' format version 2 writer (fileformat.py before structures): Linear "0" (3, 5) at 3 bits
# with its bias, "2" (2, 3) at 16 bits, HF-style "3" (4, 2) at 1 bit with channel_dim 1.
V2_FILE = base64.b64decode(
    "OAMAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJtaXhiaXRzIjoie1wiZm9ybWF0X3ZlcnNpb25cIjoyLFwibWl4Yml0c192ZXJzaW9u"
    "XCI6XCIwLjEuMFwiLFwic2NhbGVfZHR5cGVcIjpcImZsb2F0MTZcIixcImJpdF9vcmRlclwiOlwibGl0dGxlXCIsXCJtb2RlbFwi"
    "Om51bGwsXCJpbnB1dF9zaGFwZVwiOls1XSxcImxheWVyX2ZpZWxkc1wiOltcIm5hbWVcIixcImtpbmRcIixcInNoYXBlXCIsXCJi"
    "aXRzXCIsXCJhbGlhc2VzXCJdLFwibGF5ZXJzXCI6W1tcIjBcIixcIkxpbmVhclwiLFszLDVdLDNdLFtcIjJcIixcIkxpbmVhclwi"
    "LFsyLDNdLDE2XSxbXCIzXCIsXCJDb252MURcIixbNCwyXSwxXV0sXCJmbG9hdF9maWVsZHNcIjpbXCJtb2R1bGVcIixcIm5hbWVz"
    "XCIsXCJzaGFwZVwiXSxcImZsb2F0c1wiOltbXCIwXCIsW1wiYmlhc1wiXSxbM11dXSxcImxheWVyX2NoYW5uZWxfZGltc1wiOntc"
    "IjNcIjoxfSxcInByb21pc2VkX21vZGVsX2JpdHNcIjowLFwiZmxvYXRfbW9kZWxfYml0c1wiOjB9IiwibWl4Yml0c19zaGEyNTYi"
    "OiIwMTFlYTgxMmM4Njc5NDE5ZDQ4Y2U3ZTVkNTUyZTQ4MTg5NTdiNjhmMzdlODEzYzA5NDJmYmIyMjRhMzhmODdjIn0sImZsb2F0"
    "Ijp7ImR0eXBlIjoiRjMyIiwic2hhcGUiOlszXSwiZGF0YV9vZmZzZXRzIjpbMCwxMl19LCJoYWxmIjp7ImR0eXBlIjoiRjE2Iiwi"
    "c2hhcGUiOls2XSwiZGF0YV9vZmZzZXRzIjpbMTIsMjRdfSwic2NhbGVzIjp7ImR0eXBlIjoiRjE2Iiwic2hhcGUiOls1XSwiZGF0"
    "YV9vZmZzZXRzIjpbMjQsMzRdfSwiY29kZXMiOnsiZHR5cGUiOiJVOCIsInNoYXBlIjpbN10sImRhdGFfb2Zmc2V0cyI6WzM0LDQx"
    "XX19ICAgIAAAgD4AAAC/AACAPwCwgKSGgHQhOy59NVU1fC1VNW49ADhAImQ1Wxvg")


def test_version_2_files_still_read(tmp_path):
    path = tmp_path / "v2.mbits"
    path.write_bytes(V2_FILE)
    f = read_mbits(path)
    assert f.manifest["format_version"] == 2 and f.file_bytes == 873 and f.blobs["group_bits"].numel() == 0
    assert [(r.name, r.bits, r.group_size, r.channel_dim) for r in f.layers] == [
        ("0", 3, 0, 0), ("2", 16, 0, 0), ("3", 1, 0, 1)]
    state = decode_state_dict(f)
    w0 = torch.linspace(-1, 1, 15).reshape(3, 5)
    w1 = torch.linspace(-0.5, 0.7, 6).reshape(2, 3) ** 3
    w3 = torch.linspace(-2, 1, 8).reshape(2, 4).t().contiguous()
    assert torch.equal(state["0.weight"], quantize_hard(w0, 3))
    assert torch.equal(state["2.weight"], quantize_hard(w1, 16))
    assert torch.equal(state["3.weight"], quantize_hard(w3, 1, channel_dim=1))
    assert state["0.bias"].tolist() == [0.25, -0.5, 1.0]
    assert describe(path)["layers"][0]["bits"] == 3
    # structures are not part of version 2
    bad = _rewrite(path, tmp_path / "v2g.mbits", lambda m: m.update(layer_groups={"0": 1}))
    with pytest.raises(MbitsFormatError, match="v2g.mbits.*a version 2 manifest with layer_groups"):
        read_mbits(bad)


def test_version_3_without_structures_is_version_2_but_the_number(tmp_path):
    """An export without structures has exactly the version 2 layout: only the version number differs."""
    path = tmp_path / "v2.mbits"
    path.write_bytes(V2_FILE)
    f = read_mbits(path)
    state = decode_state_dict(f)
    layers = [(r, state[f"{r.name}.weight"]) for r in f.layers]
    tensors = encode_tensors(layers, [(r, state[r.key]) for r in f.floats])
    assert {n: t.tolist() for n, t in tensors.items()} == {n: t.tolist() for n, t in f.blobs.items() if t.numel()}
    manifest = {**f.manifest, "format_version": 3}
    assert fileformat.records_to_json(f.layers, f.floats).items() <= manifest.items()


# ---- damage ----------------------------------------------------------------------------------------------

def _set_group_byte(i, value):
    def change(tensors):
        tensors["group_bits"][i] = value
    return change


@pytest.mark.parametrize("change, tensors_change, message", [
    (None, _set_group_byte(0, 0xA0), "layer 'conv': structure code 10 names no bitwidth"),
    (None, _set_group_byte(2, 0xF9), "layer 'conv': structure code 15 names no bitwidth"),
    (None, _set_group_byte(4, 0x14), "layer 'hf': the padding nibble after the last structure code is not zero"),
    (None, lambda t: t.__setitem__("group_bits", t["group_bits"][:4].clone()),
     "tensor 'group_bits' holds 4 uint8 values, the manifest needs 5"),
    (None, lambda t: t.__setitem__("group_bits", torch.cat([t["group_bits"], t["group_bits"][:1]])),
     "tensor 'group_bits' holds 6 uint8 values, the manifest needs 5"),
    (None, lambda t: t.pop("group_bits"), "tensor 'group_bits' holds 0 uint8 values, the manifest needs 5"),
    (None, lambda t: t.__setitem__("group_bits", t["group_bits"].to(torch.int16)), "not a 1-D uint8 tensor"),
    (None, _set_group_byte(0, 0x21), "tensor 'codes' holds"),  # 1 -> 2 bits: valid codes, other sizes
    (lambda m: m.update(layer_groups={"conv": 2, "hf": 3, "ghost": 1}), None, r"layer_groups names \['ghost'\]"),
    (lambda m: m.update(layer_groups=[["conv", 2]]), None, "bad layer_groups in the manifest"),
    (lambda m: m["layer_groups"].pop("hf"), None, "layer 'hf' has unsupported bits 0"),
    (lambda m: m["layers"][0].__setitem__(3, 3), None,
     "layer 'conv' has bits 3 in its row, but a layer with structures"),
    (lambda m: m["layers"][2].__setitem__(3, 0), None, "layer 'plain' has unsupported bits 0"),
    (lambda m: m["layer_groups"].update(conv=12), None,
     r"bad group size 12 in layer_groups \(want an integer in 1..11"),
    (lambda m: m["layer_groups"].update(conv=0), None, "bad group size 0"),
    (lambda m: m["layer_groups"].update(conv=-2), None, "bad group size -2"),
    (lambda m: m["layer_groups"].update(conv=True), None, "bad group size True"),
    (lambda m: m["layer_groups"].update(conv=2.0), None, "bad group size 2.0"),
    (lambda m: m["layer_groups"].update(conv="2"), None, "bad group size '2'"),
    (lambda m: m["layer_groups"].update(conv=3), None,
     "tensor 'group_bits' holds 5 uint8 values, the manifest needs 4"),
    (lambda m: m["layer_groups"].update(hf=1), None, "holds 5 uint8 values, the manifest needs 7"),
    (lambda m: m["layer_groups"].update(plain=2), None, "layer 'plain' has bits 4 in its row"),
    (lambda m: m.update(format_version=2), None, "a version 2 manifest with layer_groups"),
])
def test_damaged_structures_are_format_errors(grouped_file, tmp_path, change, tensors_change, message):
    bad = _rewrite(grouped_file, tmp_path / "bad.mbits", change, tensors_change)
    with pytest.raises(MbitsFormatError, match=message) as info:
        read_mbits(bad)
    assert "bad.mbits" in str(info.value) and len(str(info.value)) < 400


def test_a_flipped_structure_code_fails_the_checksum(grouped_file, tmp_path):
    bad = _rewrite(grouped_file, tmp_path / "flip.mbits", None, _set_group_byte(1, 0x78), rehash=False)
    with pytest.raises(MbitsFormatError, match="checksum mismatch"):
        read_mbits(bad)


def test_a_crafted_structure_count_allocates_nothing(grouped_file, tmp_path):
    """A layer of 2**40 channels in structures of 1 would need 2**39 code bytes: refused before any allocation."""
    def huge(m):
        m["layers"][2][2] = [1 << 40, 6]
        m["layer_groups"]["plain"] = 1
        m["layers"][2][3] = 0

    bad = _rewrite(grouped_file, tmp_path / "huge.mbits", huge)
    with pytest.raises(MbitsFormatError, match="'group_bits' holds 5 uint8 values, the manifest needs 549755813893"):
        read_mbits(bad)


# ---- end to end: prepare_(granularity=...) -> export_model -> load --------------------------------------

class Conv1D(nn.Module):
    """Hugging Face's GPT-2 Conv1D (weight (in, out), y = x W + b), without importing transformers."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.2)
        self.bias = nn.Parameter(torch.randn(nf) * 0.1)

    def forward(self, x):
        return x @ self.weight + self.bias


Conv1D.__module__ = "transformers.pytorch_utils"


class ConvNet(nn.Module):
    """Two convs, BatchNorm, an HF-style Conv1D head (channels on dim 1) and a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(10)
        self.conv2 = nn.Conv2d(10, 7, 3, padding=1)
        self.proj = Conv1D(9, 7)  # (in=7, out=9)
        self.fc = nn.Linear(9, 4)

    def forward(self, x):  # x: (B, 3, 6, 6)
        h = F.relu(self.bn(self.conv1(x)))  # (B, 10, 6, 6)
        h = F.relu(self.conv2(h)).mean((2, 3))  # (B, 7)
        return self.fc(torch.tanh(self.proj(h)))  # (B, 4)


CYCLE = (1, 3, 8, 16, 32, 2, 5)


def _prepared(granularity):
    torch.manual_seed(5)
    model = ConvNet()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 3, 4, 5, 6, 7, 8, 16, 32), granularity=granularity))
    bits = {l.name: tuple(CYCLE[(i + g) % len(CYCLE)] for g in range(l.num_groups)) if l.grouped else CYCLE[i]
            for i, l in enumerate(space.layers)}
    space.fix_({k: list(v) if isinstance(v, tuple) else v for k, v in bits.items()})  # lists as from JSON
    return model.eval(), space, bits


@pytest.mark.parametrize("granularity, groups", [
    ("channel", {"conv1": 1, "conv2": 1, "proj": 1, "fc": 1}),
    ("group:4", {"conv1": 4, "conv2": 4, "proj": 4, "fc": 0}),  # fc has 4 channels: one structure, one bitwidth
])
def test_prepared_model_round_trip(tmp_path, granularity, groups):
    model, space, bits = _prepared(granularity)
    assert {l.name: l.group_size for l in space.layers} == groups
    assert [l.channel_dim for l in space.layers] == [0, 0, 1, 0]
    path = tmp_path / "m.mbits"
    res = export_model(model, space, path)  # the bits fixed on the space: tuples for layers with structures
    f = read_mbits(path)
    assert {r.name: r.bits for r in f.layers} == bits
    assert {r.name: r.group_size for r in f.layers} == groups
    # sizes: the data are the cost model's promise plus each run's padding; the file is within both bounds
    padding = sum(8 * packed_nbytes(c * r.weights_per_channel, b) - c * r.weights_per_channel * b
                  for r in f.layers for b, c in r.bits_channels.items() if b <= 8)
    assert (res.file_bytes - res.header_bytes) * 8 == space.cost.model_bits(bits) + padding
    assert res.promised_bytes == space.cost.model_bits(bits) / 8
    assert res.within_bound and abs(res.file_bytes - res.promised_bytes) <= size_bound_bytes(res.promised_bytes)
    assert res.file_bytes <= res.file_bound_bytes
    fresh = load(path, model=ConvNet())
    x = torch.randn(6, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))  # identical logits to the fake-quantized model
    # every structure's channels hold quantize_hard of the float weight at its bits
    for info in space.layers:
        w = space.float_weight(info.name).detach()
        got = dict(fresh.named_parameters())[f"{info.name}.weight"].detach()
        lo = 0
        for c, b in zip(info.group_channels, info.expand(bits[info.name])):
            sl = [slice(None)] * w.dim()
            sl[info.channel_dim] = slice(lo, lo + c)
            assert torch.equal(got[tuple(sl)], quantize_hard(w, b, info.channel_dim)[tuple(sl)]), (info.name, lo, b)
            lo += c


def test_export_accepts_lists_and_checks_lengths(tmp_path):
    model, space, bits = _prepared("group:4")
    lists = {k: list(v) if isinstance(v, tuple) else v for k, v in bits.items()}
    res = export_model(model, space, tmp_path / "a.mbits", bits=lists)
    assert {r.name: r.bits for r in read_mbits(tmp_path / "a.mbits").layers} == bits
    assert res.promised_bytes == space.cost.model_bits(bits) / 8
    one = {**bits, "conv1": 4}  # an int applies to every structure
    export_model(model, space, tmp_path / "b.mbits", bits=one)
    assert read_mbits(tmp_path / "b.mbits").layers[0].bits == (4, 4, 4)
    with pytest.raises(ValueError, match="structure"):
        export_model(model, space, tmp_path / "c.mbits", bits={**bits, "conv1": (4, 4)})
    assert not (tmp_path / "c.mbits").exists()
