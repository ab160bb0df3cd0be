"""export_model + load: promised-versus-measured size on several models, exact reload, clear errors."""

from __future__ import annotations

import pytest
import torch

from mixbits import PrepareConfig, export_model, load, prepare_
from mixbits.export import describe, read_mbits, size_bound_bytes
from mixbits.export.fileformat import RECIPE_ALLOWANCE_BYTES
from mixbits.export.pack import packed_nbytes
from mixbits.models import MODELS, create_model

from ._export_nets import Oddities, TinyResNet, prepared, randomize_bn_


def _check_size(result, space, bits):
    """The data part is the promise rounded up per layer; only the header is added."""
    promised_bits = space.cost.model_bits(bits)
    assert result.promised_bytes == promised_bits / 8
    padding = 0  # each run of one 1..8 bitwidth (a layer, or all its channels at those bits) fills whole bytes
    for l in space.layers:
        per = l.num_weights // l.num_channels
        channels: dict[int, int] = {}
        for c, b in zip(l.group_channels, l.expand(bits[l.name])):
            channels[b] = channels.get(b, 0) + c
        padding += sum(packed_nbytes(c * per, b) * 8 - c * per * b for b, c in channels.items() if b <= 8)
    assert (result.file_bytes - result.header_bytes) * 8 == promised_bits + padding
    assert abs(result.file_bytes - result.promised_bytes) <= size_bound_bytes(result.promised_bytes)
    assert result.within_bound
    assert result.file_bytes <= result.file_bound_bytes == (promised_bits + space.cost.file_overhead_bits) / 8
    assert result.weight_compression == space.cost.float_quantized_bits() / (space.cost.quantized_bits(bits) + padding)


def _max_diff(a, b, x):
    with torch.no_grad():
        return float((a(x) - b(x)).abs().max())


def test_digits_cnn_pinned_sizes(tmp_path):
    kwargs = dict(in_channels=1, num_classes=10, input_size=8)
    model = create_model("digits_cnn", **kwargs)
    bits = {"features.0": 32, "features.3": 1, "features.7": 1, "classifier": 4}  # the default run's bits
    space = prepare_(model, PrepareConfig())
    space.fix_(bits)
    res = export_model(model, space, tmp_path / "m.mbits", zoo="digits_cnn", model_kwargs=kwargs, input_shape=(1, 8, 8))
    assert (res.promised_bytes, res.quantized_weight_bytes, res.float_quantized_bytes) == (12220, 9620, 232576)
    assert res.file_bytes == 12220 + res.header_bytes and res.header_bytes < 1400
    # the cost model's header bound, known before any bits are chosen, holds and is tight
    assert (space.cost.file_overhead_bits, res.header_bytes) == (12212, 1184)
    assert 0 < space.cost.file_overhead_bits // 8 - res.header_bytes < RECIPE_ALLOWANCE_BYTES + 40
    _check_size(res, space, bits)
    net = load(tmp_path / "m.mbits")  # rebuilt from the zoo name
    assert type(net).__name__ == "DigitsCNN" and not net.training
    assert _max_diff(net, model.eval(), torch.randn(16, 1, 8, 8)) == 0.0


@pytest.mark.parametrize("pattern", ["mixed", "all1", "all8", "half_float"])
def test_resnet_like_every_bitwidth(tmp_path, pattern):
    choose = {"mixed": lambda i, l: [1, 2, 3, 4, 5, 6, 7, 8, 16, 32][i % 10], "all1": lambda i, l: 1,
              "all8": lambda i, l: 8, "half_float": lambda i, l: [16, 32][i % 2]}[pattern]
    model, space, bits = prepared(randomize_bn_(TinyResNet()), choose)
    res = export_model(model, space, tmp_path / "r.mbits", import_path="tests._export_nets:tiny_resnet",
                       model_kwargs={"width": 8}, input_shape=(3, 12, 12))
    _check_size(res, space, bits)
    with pytest.raises(ValueError, match="would run that code"):
        load(tmp_path / "r.mbits")  # the import path is code: refused by default
    net = load(tmp_path / "r.mbits", trust_code=True)  # rebuilt from the import path
    x = torch.randn(4, 3, 12, 12)
    assert _max_diff(net, model, x) <= 1e-5
    # A fresh instance given by the user gets the same weights.
    assert _max_diff(load(tmp_path / "r.mbits", model=TinyResNet()), net, x) == 0.0


@pytest.mark.parametrize("granularity", ["channel", "group:3"])
def test_resnet_like_bits_per_structure(tmp_path, granularity):
    every = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)
    model, space, bits = prepared(randomize_bn_(TinyResNet()), lambda i, l: tuple(
        every[(3 * i + g) % 10] for g in range(l.num_groups)) if l.grouped else every[i % 10], granularity=granularity)
    assert all(l.grouped for l in space.layers)
    res = export_model(model, space, tmp_path / "r.mbits", input_shape=(3, 12, 12))
    _check_size(res, space, bits)
    f = read_mbits(tmp_path / "r.mbits")
    assert {r.name: r.bits for r in f.layers} == bits
    assert sum(r.index_bytes for r in f.layers) == f.blobs["group_bits"].numel() == sum(
        l.index_bits for l in space.layers) // 8
    net = load(tmp_path / "r.mbits", model=TinyResNet())
    x = torch.randn(4, 3, 12, 12)
    assert _max_diff(net, model, x) <= 1e-5
    info = describe(tmp_path / "r.mbits")
    assert info["totals"]["within_bound"] and [r["structures"] for r in info["layers"]] == [
        l.num_groups for l in space.layers]


def test_shared_tied_excluded_scalar_and_conv1d(tmp_path):
    model, space, bits = prepared(Oddities(), lambda i, l: [3, 16, 7, 1][i], exclude=("keep",))
    assert [(l.name, l.aliases) for l in space.layers] == [
        ("conv", ()), ("dw", ()), ("shared", ("twice.0", "twice.1")), ("a", ("b",))]
    res = export_model(model, space, tmp_path / "o.mbits")
    _check_size(res, space, bits)
    f = read_mbits(tmp_path / "o.mbits")
    assert [(r.name, r.bits) for r in f.layers] == [("conv", 3), ("dw", 16), ("shared", 7), ("a", 1)]  # each once
    assert {r.key: r.aliases for r in f.floats}["a.bias"] == ("b.bias",)
    net = load(tmp_path / "o.mbits", model=Oddities())
    assert net.b.weight is net.a.weight  # still tied after loading
    assert net.alpha.detach().item() == 0.75
    assert _max_diff(net, model, torch.randn(5, 3, 13)) <= 1e-5


def test_root_module_is_the_layer(tmp_path):
    model, space, bits = prepared(torch.nn.Linear(10, 4), lambda i, l: 2)
    res = export_model(model, space, tmp_path / "lin.mbits")
    _check_size(res, space, bits)
    x = torch.randn(3, 10)
    assert _max_diff(load(tmp_path / "lin.mbits", model=torch.nn.Linear(10, 4)), model, x) == 0.0


def test_describe_needs_no_model(tmp_path):
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: 2)
    export_model(model, space, tmp_path / "r.mbits")
    info = describe(tmp_path / "r.mbits")
    assert [r["bits"] for r in info["layers"]] == [2] * len(space.layers)
    assert info["totals"]["quantized_weight_bytes"] == sum(r["stored_bytes"] for r in info["layers"])
    assert info["totals"]["promised_bytes"] == space.cost.model_bits(bits) / 8
    assert info["totals"]["within_bound"] and info["model"] is None


def test_export_errors(tmp_path):
    model = TinyResNet(width=4)
    space = prepare_(model, PrepareConfig())
    with pytest.raises(ValueError, match="not fixed"):
        export_model(model, space, tmp_path / "x.mbits")
    with pytest.raises(ValueError, match="does not match the model"):
        export_model(model, space, tmp_path / "x.mbits", bits={"stem": 2})
    bits = {l.name: 2 for l in space.layers}
    with pytest.raises(ValueError, match="not both"):
        export_model(model, space, tmp_path / "x.mbits", bits=bits, zoo="digits_cnn", import_path="a:b")
    with pytest.raises(ValueError, match="package.module:function"):
        export_model(model, space, tmp_path / "x.mbits", bits=bits, import_path="no_colon")
    with pytest.raises(ValueError, match="JSON"):
        export_model(model, space, tmp_path / "x.mbits", bits=bits, zoo="digits_cnn", model_kwargs={"w": (1, 2)})
    with pytest.raises(ValueError, match="not in the model"):
        export_model(TinyResNet(width=4), prepare_(torch.nn.Sequential(torch.nn.Linear(2, 2))), tmp_path / "x.mbits",
                     bits={"0": 2})
    assert not list(tmp_path.iterdir())  # nothing written, not even a temporary file


def test_load_errors(tmp_path):
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: 4)
    export_model(model, space, tmp_path / "r.mbits")
    with pytest.raises(ValueError, match="pass the model"):
        load(tmp_path / "r.mbits")  # no recipe in the file
    with pytest.raises(ValueError, match="prepared"):
        load(tmp_path / "r.mbits", model=model)
    with pytest.raises(ValueError, match=r"does not match the model: shapes differ for stem.weight "
                                         r"\(file \(4, 3, 3, 3\), model \(5, 3, 3, 3\)\)"):
        load(tmp_path / "r.mbits", model=TinyResNet(width=5))
    with pytest.raises(ValueError, match="the model has no stem.weight, .*; the file has no 0.conv1.weight"):
        load(tmp_path / "r.mbits", model=TinyResNet(width=4).stage1)
    with pytest.raises(ValueError, match="the file has no"):
        bigger = torch.nn.Sequential()
        bigger.add_module("net", TinyResNet(width=4))
        load(tmp_path / "r.mbits", model=bigger)
    export_model(model, space, tmp_path / "bad.mbits", import_path="no_such_package_xyz:make")
    with pytest.raises(ValueError, match="cannot import the model builder 'no_such_package_xyz:make'"):
        load(tmp_path / "bad.mbits", trust_code=True)
    export_model(model, space, tmp_path / "zoo.mbits", zoo="no_such_model",
                 model_kwargs=dict(in_channels=3, num_classes=10, input_size=8))
    with pytest.raises(ValueError, match="model 'no_such_model', which is not a built-in model; known: digits_cnn"):
        load(tmp_path / "zoo.mbits")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.mbits")


@pytest.mark.parametrize("name", MODELS.names())
def test_every_zoo_model_exports_within_bound(tmp_path, name):
    kwargs = dict(in_channels=3, num_classes=10, input_size=16)
    model = create_model(name, **kwargs)
    model, space, bits = prepared(randomize_bn_(model), lambda i, l: [1, 2, 4, 8, 16, 32, 3][i % 7])
    res = export_model(model, space, tmp_path / "z.mbits", zoo=name, model_kwargs=kwargs, input_shape=(3, 16, 16))
    _check_size(res, space, bits)
    if name == "resnet20":  # 20 layers and 19 norms: the header still stays under 4 KiB
        assert len(space.layers) == 20 and res.header_bytes < 4096
    assert _max_diff(load(tmp_path / "z.mbits"), model, torch.randn(1, 3, 16, 16)) <= 1e-5


def test_non_finite_weights_are_refused(tmp_path):
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: 2)
    with torch.no_grad():
        model.stage1[0].conv2._parameters["weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="layer 'stage1.0.conv2' has NaN or infinite weights"):
        export_model(model, space, tmp_path / "nan.mbits")
    assert not list(tmp_path.iterdir())


def test_load_into_a_model_built_on_the_meta_device(tmp_path):
    model, space, bits = prepared(randomize_bn_(TinyResNet()), lambda i, l: [1, 4, 8, 16][i % 4])
    export_model(model, space, tmp_path / "r.mbits", import_path="tests._export_nets:tiny_resnet",
                 model_kwargs={"width": 8}, input_shape=(3, 12, 12))
    with torch.device("meta"):
        shell = TinyResNet()
    net = load(tmp_path / "r.mbits", model=shell)
    assert not any(t.is_meta for t in (*net.parameters(), *net.buffers()))
    x = torch.randn(4, 3, 12, 12)
    assert _max_diff(net, load(tmp_path / "r.mbits", model=TinyResNet()), x) == 0.0
