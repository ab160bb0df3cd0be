"""Preprocessing travels with the model: manifest round trip, validation, ONNX metadata and in-graph normalisation."""

from __future__ import annotations

import json

import pytest
import torch

from mixbits import export_model, load
from mixbits.export import MbitsFormatError, Preprocessing, read_mbits
from mixbits.export.fileformat import checksum
from mixbits.export.preprocessing import parse_preprocessing

from ._export_nets import TinyResNet, prepared

PRE = {"mean": [0.4914, 0.4822, 0.4465], "std": [0.247, 0.2435, 0.2616], "class_names": list("abcdefghij")}


def _export(tmp_path, pre=PRE):
    model, space, _ = prepared(TinyResNet(width=4), lambda i, l: 4)
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb, input_shape=(3, 8, 8), preprocessing=pre)
    return mb


def test_round_trip_through_the_file(tmp_path):
    mb = _export(tmp_path)
    pre = load(mb, model=TinyResNet(width=4)).mixbits_preprocessing
    assert pre == Preprocessing(mean=PRE["mean"], std=PRE["std"], class_names=PRE["class_names"])
    assert load(mb, model=TinyResNet(width=4), packed=True).mixbits_preprocessing == pre
    assert read_mbits(mb).manifest["preprocessing"] == PRE


def test_files_without_it_load(tmp_path):
    mb = _export(tmp_path, pre=None)
    assert "preprocessing" not in read_mbits(mb).manifest
    assert load(mb, model=TinyResNet(width=4)).mixbits_preprocessing is None


@pytest.mark.parametrize("bad, match", [
    ({"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}, "positive"),
    ({"mean": [0.5, float("nan"), 0.5], "std": [1, 1, 1]}, "finite"),
    ({"mean": [0.5, 0.5], "std": [1, 1, 1]}, "differ in length"),
    ({"mean": [0.5, 0.5], "std": [1, 1]}, "3 channels"),
    ({"mean": [0.5], "std": [1], "class_names": [1, 2]}, "class_names"),
    ({"mean": [0.5], "std": [1], "scale": 255}, "optional 'class_names'"),
])
def test_bad_values_are_rejected_on_write(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        _export(tmp_path, pre=bad)
    assert not (tmp_path / "r.mbits").exists()


def test_bad_values_are_rejected_on_read(tmp_path):
    from safetensors.torch import load_file, save_file

    mb = _export(tmp_path)
    f = read_mbits(mb)
    manifest = dict(f.manifest, preprocessing={"mean": [0.5, 0.5, 0.5], "std": [1.0, -1.0, 1.0]})
    text = json.dumps(manifest)
    tensors = load_file(str(mb))
    save_file(tensors, str(tmp_path / "bad.mbits"), metadata={"mixbits": text, "mixbits_sha256": checksum(text, tensors)})
    with pytest.raises(MbitsFormatError, match="bad preprocessing"):
        read_mbits(tmp_path / "bad.mbits")


def test_one_value_for_all_channels():
    assert parse_preprocessing({"mean": [0.5], "std": [0.25]}, (3, 8, 8)).mean == (0.5,)
    x = torch.rand(2, 3, 4, 4)
    assert torch.equal(Preprocessing(mean=[0.5], std=[0.25]).normalize(x), (x - 0.5) / 0.25)


def test_onnx_metadata_and_graph(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mixbits import export_onnx
    from mixbits.export import onnx_max_abs_diff, onnx_preprocessing
    from mixbits.export.onnx_export import NormalizedModel

    mb = _export(tmp_path)
    net = load(mb, model=TinyResNet(width=4))
    plain = export_onnx(mb, tmp_path / "r.onnx", model=TinyResNet(width=4))
    inside = export_onnx(mb, tmp_path / "n.onnx", model=TinyResNet(width=4), normalize=True)
    assert onnx_preprocessing(plain) == (net.mixbits_preprocessing, False)
    assert onnx_preprocessing(inside) == (net.mixbits_preprocessing, True)
    raw = torch.rand(4, 3, 8, 8)  # images scaled to [0, 1]
    assert onnx_max_abs_diff(inside, NormalizedModel(net, net.mixbits_preprocessing), raw) <= 1e-4
    assert onnx_max_abs_diff(plain, net, net.mixbits_preprocessing.normalize(raw)) <= 1e-4


def test_normalize_needs_recorded_preprocessing(tmp_path):
    pytest.importorskip("onnx")
    from mixbits import export_onnx

    mb = _export(tmp_path, pre=None)
    with pytest.raises(ValueError, match="no input normalisation"):
        export_onnx(mb, tmp_path / "r.onnx", model=TinyResNet(width=4), normalize=True)
