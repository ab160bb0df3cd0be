"""ONNX export: onnxruntime's outputs match PyTorch's within 1e-4; the bits are in the metadata."""

from __future__ import annotations

import pytest
import torch

from mixbits import export_model, export_onnx, load
from mixbits.export import compare_onnx, onnx_bits, onnx_max_abs_diff

from ._export_nets import Oddities, TinyResNet, grouped_tiny_resnet, prepared, randomize_bn_

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def test_resnet_like_matches_onnxruntime(tmp_path):
    model, space, bits = prepared(randomize_bn_(TinyResNet()), lambda i, l: [1, 2, 4, 8, 16, 32, 3][i % 7])
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb, import_path="tests._export_nets:tiny_resnet", input_shape=(3, 16, 16))
    path = export_onnx(mb, tmp_path / "r.onnx", trust_code=True)
    assert onnx_bits(path) == bits
    net = load(mb, trust_code=True)
    x = torch.randn(5, 3, 16, 16)  # a batch size other than the export's: the batch axis is dynamic
    assert onnx_max_abs_diff(path, net, x) <= 1e-4
    assert onnx_max_abs_diff(path, model, x) <= 1e-4  # and against the fake-quantized model itself


def test_labelled_batches_give_accuracies(tmp_path):
    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: 2)
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb)
    path = export_onnx(mb, tmp_path / "r.onnx", model=TinyResNet(width=4), input_shape=(3, 8, 8))
    net = load(mb, model=TinyResNet(width=4))
    x = torch.randn(12, 3, 8, 8)
    y = net(x).argmax(1)
    out = compare_onnx(path, net, [(x[:7], y[:7]), (x[7:], y[7:])])
    assert out["max_abs_diff"] <= 1e-4 and out["torch_accuracy"] == 1.0 and out["onnx_accuracy"] == 1.0


def test_odd_layers_export(tmp_path):
    model, space, bits = prepared(Oddities(), lambda i, l: [5, 16, 1, 8][i], exclude=("keep",))
    mb = tmp_path / "o.mbits"
    export_model(model, space, mb)
    path = export_onnx(mb, tmp_path / "o.onnx", model=Oddities(), input_shape=(3, 13))
    assert onnx_max_abs_diff(path, model, torch.randn(4, 3, 13)) <= 1e-4


def test_needs_an_input_shape(tmp_path):
    model, space, _ = prepared(TinyResNet(width=4), lambda i, l: 2)
    export_model(model, space, tmp_path / "r.mbits")
    with pytest.raises(ValueError, match="records no input shape"):
        export_onnx(tmp_path / "r.mbits", tmp_path / "r.onnx", model=TinyResNet(width=4))
    assert not (tmp_path / "r.onnx").exists()


def test_bits_per_structure_in_the_metadata(tmp_path):
    import onnx

    model, space, bits = grouped_tiny_resnet()
    assert bits["stem"] == (1, 3) and bits["fc"] == (32, 2, 1, 3)  # 4 channels -> 2 structures; 10 -> 4
    mb = tmp_path / "g.mbits"
    export_model(model.eval(), space, mb, input_shape=(3, 8, 8))
    path = export_onnx(mb, tmp_path / "g.onnx", model=TinyResNet(width=4))
    assert onnx_bits(path) == bits
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["mixbits.format_version"] == "4"
    assert props["mixbits.bits.fc"] == "32,2,1,3" and props["mixbits.group_size.fc"] == "3"
    assert props["mixbits.bits.stem"] == "1,3" and props["mixbits.group_size.stem"] == "3"
    assert onnx_max_abs_diff(path, model, torch.randn(3, 3, 8, 8)) <= 1e-4
