"""Forged .mbits files (checksum recomputed) that hold values the exporter never writes: one MbitsFormatError each.

One test per rule of :mod:`mixbits.export.values`, :mod:`mixbits.export.bounds`, the key map of
:mod:`mixbits.export.validate` and the tensor table check of :mod:`mixbits.export.reader`; plus the
exporter's side of each rule (it refuses to write what the reader refuses to read).
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from mixbits import export_model, load
from mixbits.cli import main
from mixbits.export import MbitsFormatError, describe, read_mbits
from mixbits.export.bounds import MAX_STRINGS
from mixbits.export.layout import SCALE_RANGE, checksum
from mixbits.export.pack import packed_nbytes
from mixbits.export.records import weight_key
from mixbits.quant import weight_scale

from ._export_nets import TinyResNet, prepared, randomize_bn_


def _export(model, bits_of, path, **config):
    model, space, _ = prepared(model, bits_of, **config)
    export_model(model, space, path)
    return path


@pytest.fixture
def good(tmp_path):
    torch.manual_seed(0)
    return _export(randomize_bn_(TinyResNet(width=4)), lambda i, l: [4, 2, 8, 16, 32, 3][i % 6], tmp_path / "g.mbits")


@pytest.fixture
def grouped(tmp_path):
    torch.manual_seed(0)
    cycle = (4, 32, 2, 16, 8, 1)
    return _export(randomize_bn_(TinyResNet(width=4)),
                   lambda i, l: tuple(cycle[(i + g) % 6] for g in range(l.num_groups)) if l.grouped else 4,
                   tmp_path / "grouped.mbits", granularity="group:2")


def forge(src, dst, manifest=None, tensors=None):
    """``src`` with its manifest and tensors edited in place by the callables, the checksum recomputed."""
    from safetensors.torch import load as st_load, save

    data = src.read_bytes()
    n = int.from_bytes(data[:8], "little")
    m = json.loads(json.loads(data[8:8 + n])["__metadata__"]["mixbits"])
    t = st_load(data)
    if manifest is not None:
        manifest(m)
    if tensors is not None:
        tensors(t)
    text = json.dumps(m)
    try:
        digest = checksum(text, t)
    except RuntimeError:  # a 0-d tensor: no checksum can be computed the library's way
        digest = "0" * 64
    dst.write_bytes(save(t, metadata={"mixbits": text, "mixbits_sha256": digest}))
    return dst


def _float_offset(f, key):
    """Where the float tensor ``key`` starts in the ``float`` blob (after the 32-bit layers)."""
    offset = f.blobs["float"].numel() - sum(r.numel for r in f.floats)
    for rec in f.floats:
        if rec.key == key:
            return offset
        offset += rec.numel
    raise KeyError(key)


def _set(blob, index, value):
    def edit(t):
        t[blob][index] = value
    return edit


# ---- the tensor table, before the checksum -------------------------------------------------------------------

@pytest.mark.parametrize("tensor, message", [
    (torch.tensor(1.0, dtype=torch.float16), r"tensor 'scales' holds float16 values of shape \[\], not a 1-D"),
    (torch.zeros(4, dtype=torch.float32), r"tensor 'scales' holds float32 values of shape \[4\], not a 1-D float16"),
    (torch.zeros(2, 2, dtype=torch.float16), r"shape \[2, 2\], not a 1-D float16"),
])
def test_tensor_dtype_and_shape_are_checked_before_the_checksum(good, tmp_path, tensor, message):
    bad = forge(good, tmp_path / "bad.mbits", tensors=lambda t: t.__setitem__("scales", tensor))
    with pytest.raises(MbitsFormatError, match=message):
        read_mbits(bad)


def test_inspect_of_a_bad_file_is_one_line_and_no_traceback(good, tmp_path, capsys):
    bad = forge(good, tmp_path / "bad.mbits", tensors=lambda t: t.__setitem__("half", torch.tensor(1.0).half()))
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "is not a valid .mbits file" in err, err


# ---- values ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), -0.5, 0.0, 2.0 ** -20, 65504.0])
def test_scales_lie_where_the_quantizer_clamps_them(good, tmp_path, value):
    bad = forge(good, tmp_path / "bad.mbits", tensors=_set("scales", 0, value))
    with pytest.raises(MbitsFormatError, match=r"scale 0 is .*, outside 6.10352e-05\.\.60000 where every 1\.\.8-bit scale lies"):
        read_mbits(bad)


def test_scale_range_is_the_quantizers():
    w = torch.tensor([[1e-9, -1e-9], [1e9, 0.0], [0.0, 0.0]])  # (3 channels, 2)
    for bits in (1, 2, 4, 8):
        s = weight_scale(w, bits).tolist()
        assert s[0] == s[2] == SCALE_RANGE[0] and s[1] == SCALE_RANGE[1]


@pytest.mark.parametrize("blob, value, message", [
    ("half", float("inf"), "a 16-bit weight is not finite"),
    ("half", float("nan"), "a 16-bit weight is not finite"),
    ("float", float("nan"), "a 32-bit weight is not finite"),
    ("float", -float("inf"), "a 32-bit weight is not finite"),
])
def test_layer_weights_are_finite(good, tmp_path, blob, value, message):
    bad = forge(good, tmp_path / "bad.mbits", tensors=_set(blob, 0, value))
    with pytest.raises(MbitsFormatError, match=message):
        read_mbits(bad)


@pytest.mark.parametrize("key, value, message", [
    ("bn.running_var", -0.25, r"BatchNorm variance 'bn.running_var' has a negative value -0.25"),
    ("bn.running_var", float("inf"), r"BatchNorm statistics 'bn.running_var' are not finite"),
    ("stage1.0.bn1.running_mean", float("inf"), r"BatchNorm statistics 'stage1.0.bn1.running_mean' are not finite"),
    ("bn.weight", float("nan"), "a float tensor holds NaN"),
    ("fc.bias", float("inf"), r"float tensor 'fc.bias' holds infinities the manifest does not declare"),
])
def test_float_tensors(good, tmp_path, key, value, message):
    offset = _float_offset(read_mbits(good), key)
    bad = forge(good, tmp_path / "bad.mbits", tensors=_set("float", offset + 1, value))
    with pytest.raises(MbitsFormatError, match=message):
        read_mbits(bad)


def test_a_declared_infinity_loads_but_not_in_batchnorm_statistics(good, tmp_path):
    offset = _float_offset(read_mbits(good), "fc.bias")
    ok = forge(good, tmp_path / "ok.mbits", manifest=lambda m: m.update(float_infinite=["fc.bias"]),
               tensors=_set("float", offset, -float("inf")))
    net = load(ok, model=TinyResNet(width=4))
    assert net.fc.bias[0].item() == -float("inf")
    bad = forge(good, tmp_path / "bad.mbits", manifest=lambda m: m.update(float_infinite=["bn.running_var"]))
    with pytest.raises(MbitsFormatError, match="float_infinite names the BatchNorm statistics"):
        read_mbits(bad)
    bad = forge(good, tmp_path / "bad2.mbits", manifest=lambda m: m.update(float_infinite=["nowhere"]))
    with pytest.raises(MbitsFormatError, match=r"float_infinite names \['nowhere'\], which are not float tensors"):
        read_mbits(bad)


class Masked(nn.Module):
    """A Linear and a -inf mask kept as a buffer (as attention masks are)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.register_buffer("mask", torch.tensor([0.0, -float("inf"), 0.0]))

    def forward(self, x):
        return self.fc(x) + self.mask  # (B, 3)


def test_the_exporter_declares_infinite_buffers_and_they_load(tmp_path):
    torch.manual_seed(0)
    model, space, _ = prepared(Masked(), lambda i, l: 4)
    result = export_model(model, space, tmp_path / "m.mbits")
    assert result.file_bytes <= result.file_bound_bytes  # the header bound counts float_infinite
    f = read_mbits(tmp_path / "m.mbits")
    assert f.manifest["float_infinite"] == ["mask"] and [r.key for r in f.floats if r.infinite] == ["mask"]
    net = load(f, model=Masked())
    assert net.mask.tolist() == [0.0, -float("inf"), 0.0]


def test_the_exporter_refuses_what_the_reader_refuses(tmp_path):
    def export(edit, bits=4):
        torch.manual_seed(0)
        model = randomize_bn_(TinyResNet(width=4))
        edit(model)
        model, space, _ = prepared(model, lambda i, l: bits)
        export_model(model, space, tmp_path / "x.mbits")

    with pytest.raises(ValueError, match="float tensor 'bn.bias' holds NaN"):
        export(lambda m: m.bn.bias.data.fill_(float("nan")))
    with pytest.raises(ValueError, match="BatchNorm variance 'bn.running_var' has negative values"):
        export(lambda m: m.bn.running_var.fill_(-1.0))
    with pytest.raises(ValueError, match="BatchNorm statistics 'bn.running_mean' are not finite"):
        export(lambda m: m.bn.running_mean.fill_(float("inf")))
    with pytest.raises(ValueError, match=r"layer 'stem' has weights beyond float16's range .* give it 32 bits"):
        export(lambda m: m.stem.weight.data.mul_(1e6), bits=16)


def test_codes_that_do_not_reach_their_scale_are_refused_on_decoding(good, tmp_path):
    f = read_mbits(good)
    stem = f.layers[0]
    assert stem.bits == 4 and not stem.grouped
    n = packed_nbytes(stem.num_weights, 4)
    bad = forge(good, tmp_path / "bad.mbits", tensors=_set("codes", slice(0, n), 0x77))  # every code 0
    read_mbits(bad)  # each code is one a quantizer produces...
    with pytest.raises(MbitsFormatError, match=r"layer 'stem': a 4-bit channel's levels reach only 0 of 7"):
        load(bad, model=TinyResNet(width=4))  # ...but not with these scales


def test_swapped_structure_nibbles_are_a_channel_permutation(grouped, tmp_path):
    """Swapping the 4-bit codes of two structures of equal channel counts moves each run's channels: the file
    is then the export of a weight with those channels swapped, a valid file of another model (documented);
    no check can tell it from an export. Swapping structures of unequal sizes misaligns the runs (an error)."""
    f = read_mbits(grouped)
    rec = next(r for r in f.layers if r.grouped)
    assert rec.group_bits[:2] == (4, 32) and rec.group_channels[:2] == (2, 2)

    def swap(t):
        byte = int(t["group_bits"][0])
        t["group_bits"][0] = (byte >> 4) | ((byte & 15) << 4)

    swapped = forge(grouped, tmp_path / "swap.mbits", tensors=swap)
    before = load(grouped, model=TinyResNet(width=4)).state_dict()[rec.state_keys[0]]
    after = load(swapped, model=TinyResNet(width=4)).state_dict()[rec.state_keys[0]]
    order = [2, 3, 0, 1] + list(range(4, rec.num_channels))
    assert torch.equal(after, before[order])


@pytest.mark.parametrize("byte, message", [
    (0xAA, "structure code 10 names no bitwidth"),
    (0xF3, "structure code 15 names no bitwidth"),
])
def test_structure_codes_out_of_range(grouped, tmp_path, byte, message):
    bad = forge(grouped, tmp_path / "bad.mbits", tensors=_set("group_bits", 0, byte))
    with pytest.raises(MbitsFormatError, match=message):
        read_mbits(bad)


# ---- the key map ------------------------------------------------------------------------------------------------

def test_a_layer_key_cannot_hand_another_records_key_to_this_tensor(good, tmp_path):
    names = [r.name for r in read_mbits(good).layers]

    def steal(m):  # the second layer's tensor under the first layer's key
        m["layer_keys"] = {names[1]: [weight_key(names[0])]}

    with pytest.raises(MbitsFormatError, match=rf"layer '{names[1]}' has state-dict keys \['{names[0]}.weight'\]"):
        read_mbits(forge(good, tmp_path / "steal.mbits", manifest=steal))
    with pytest.raises(MbitsFormatError, match=r"layer_keys names \['nowhere'\], which are not layers"):
        read_mbits(forge(good, tmp_path / "k.mbits", manifest=lambda m: m.update(layer_keys={"nowhere": ["x"]})))


def test_no_key_names_two_tensors(good, tmp_path):
    stem = read_mbits(good).layers[0].name
    with pytest.raises(MbitsFormatError, match=rf"names the state-dict keys \['{stem}.weight'\] twice"):
        read_mbits(forge(good, tmp_path / "a.mbits",
                         manifest=lambda m: m.update(float_aliases={"fc.bias": [f"{stem}.weight"]})))
    with pytest.raises(MbitsFormatError, match=r"float_aliases names \['nowhere'\], which are not float tensors"):
        read_mbits(forge(good, tmp_path / "b.mbits", manifest=lambda m: m.update(float_aliases={"nowhere": ["x"]})))


# ---- work bounds --------------------------------------------------------------------------------------------------

def test_a_small_file_naming_a_million_tensors_is_refused_at_once(good, tmp_path):
    bad = forge(good, tmp_path / "many.mbits",
                manifest=lambda m: m["floats"].append(["x", [f"n{i}" for i in range(1_200_000)], [0]]))
    t0 = time.perf_counter()
    with pytest.raises(MbitsFormatError, match=r"strings .* more than a file of at most 16,384 tensors has"):
        read_mbits(bad)
    assert time.perf_counter() - t0 < 5.0  # about 0.2 s; generous for a loaded machine
    assert 1_200_000 > MAX_STRINGS


def test_more_layers_than_the_data_can_hold(good, tmp_path):
    bad = forge(good, tmp_path / "layers.mbits",
                manifest=lambda m: m["layers"].extend([f"l{i}", "Linear", [1], 32] for i in range(10_000)))
    with pytest.raises(MbitsFormatError, match=r"names 10,\d{3} quantized layers, but the file holds only"):
        read_mbits(bad)


# ---- names shown to a terminal ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, shown", [
    ("\x1b[2J\x1b]0;PWNED\x07", r"\x1b[2J\x1b]0;PWNED\x07"),
    ("a\ud800b", r"a\ud800b"),
    ("evil\u202egnp.exe", r"evil\u202egnp.exe"),
])
def test_inspect_escapes_names_and_kinds(good, tmp_path, capsys, name, shown):
    def rename(m):
        m["layers"][0][0] = name
        m["layers"][0][1] = name

    bad = forge(good, tmp_path / "names.mbits", manifest=rename)
    assert describe(bad)["layers"][0]["name"] == name  # the data stay as they are
    assert main(["inspect", str(bad)]) == 0
    out = capsys.readouterr().out
    assert out.count(shown) == 2  # name and kind
    assert all(c == "\n" or (c.isprintable() and c != "\u202e") for c in out)
