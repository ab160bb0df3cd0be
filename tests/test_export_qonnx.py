"""QONNX export: Quant / BipolarQuant weight nodes that qonnx executes and cleans up, matching mixbits.load."""

from __future__ import annotations

import pytest
import torch

from mixbits import PrepareConfig, export_model, export_onnx, load, prepare_
from mixbits.export.onnx_packed import PackedFormError

from ._export_nets import Oddities, TinyResNet, prepared, randomize_bn_

onnx = pytest.importorskip("onnx")
pytest.importorskip("qonnx", reason="the QONNX checks need the qonnx package (pip install 'mixbits[qonnx]')")


def _run(path, x):
    from mixbits.export.qonnx_export import execute_qonnx

    return torch.from_numpy(execute_qonnx(str(path), x.numpy()))


def test_every_bitwidth_runs_in_qonnx_and_survives_cleanup(tmp_path):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    model, space, bits = prepared(randomize_bn_(TinyResNet()), lambda i, l: [1, 2, 3, 4, 5, 6, 7, 8, 16, 32][i % 10])
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb, input_shape=(3, 16, 16))
    path = export_onnx(mb, tmp_path / "r.qonnx.onnx", model=TinyResNet(), form="qonnx")
    proto = onnx.load(str(path))
    quants = [n for n in proto.graph.node if n.op_type in ("Quant", "BipolarQuant")]
    assert all(n.domain == "qonnx.custom_op.general" for n in quants)
    # one quantizer per 1..8-bit layer: BipolarQuant for the binary ones
    assert sorted(n.op_type for n in quants) == sorted(
        "BipolarQuant" if b == 1 else "Quant" for b in bits.values() if b <= 8)
    net = load(mb, model=TinyResNet())
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        want = net(x)
    assert float((_run(path, x) - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))
    clean = cleanup_model(ModelWrapper(str(path)))
    kept = [n.op_type for n in clean.graph.node if n.op_type in ("Quant", "BipolarQuant")]
    assert len(kept) == len(quants)  # cleanup keeps the quantizers (it would fold an IntQuant)


def test_bits_per_structure_and_conv1d(tmp_path):
    model = TinyResNet(width=4)
    space = prepare_(model, PrepareConfig(candidates=(1, 2, 4, 8, 16, 32), granularity="group:3"))
    cycle = (1, 4, 8, 16, 32, 2)
    space.fix_({l.name: tuple(cycle[(i + g) % 6] for g in range(l.num_groups)) if l.grouped else 4
                for i, l in enumerate(space.layers)})
    mb = tmp_path / "g.mbits"
    export_model(model.eval(), space, mb, input_shape=(3, 8, 8))
    path = export_onnx(mb, tmp_path / "g.onnx", model=TinyResNet(width=4), form="qonnx")
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert float((_run(path, x) - load(mb, model=TinyResNet(width=4))(x)).abs().max()) <= 1e-4

    model, space, _ = prepared(Oddities(), lambda i, l: [5, 16, 1, 8][i], exclude=("keep",))
    mb = tmp_path / "o.mbits"
    export_model(model, space, mb)
    path = export_onnx(mb, tmp_path / "o.onnx", model=Oddities(), input_shape=(3, 13), form="qonnx")
    x = torch.randn(4, 3, 13)
    with torch.no_grad():
        assert float((_run(path, x) - load(mb, model=Oddities())(x)).abs().max()) <= 1e-4


def test_lstm_is_refused(tmp_path):
    from .test_export_onnx_packed import _Lstm

    model, space, _ = prepared(_Lstm(), lambda i, l: 4)
    export_model(model, space, tmp_path / "l.mbits")
    with pytest.raises(PackedFormError, match="QONNX"):
        export_onnx(tmp_path / "l.mbits", tmp_path / "l.onnx", model=_Lstm(), input_shape=(5, 4), form="qonnx")
