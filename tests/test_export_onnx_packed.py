"""Packed ONNX: integer initializers + DequantizeLinear / bit unpacking reproduce mixbits.load in onnxruntime."""

from __future__ import annotations

import pytest
import torch

from mixbits import export_model, export_onnx, load
from mixbits.export import onnx_bits, onnx_max_abs_diff
from mixbits.export.onnx_packed import PackedFormError

from ._export_nets import Oddities, TinyResNet, grouped_tiny_resnet, prepared, randomize_bn_

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

EVERY_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16, 32)


def _weight_inits(path, mbits):
    """{initializer name: data type} of the initializers that hold a quantized weight's data."""
    proto = onnx.load(str(path))
    return proto, {i.name: i.data_type for i in proto.graph.initializer}


def test_every_bitwidth_matches_load_and_stays_small(tmp_path):
    model, space, bits = prepared(randomize_bn_(TinyResNet()), lambda i, l: EVERY_BITS[i % len(EVERY_BITS)])
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb, input_shape=(3, 16, 16))
    path = export_onnx(mb, tmp_path / "r.onnx", model=TinyResNet())
    assert onnx_bits(path) == bits
    net = load(mb, model=TinyResNet())
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        scale = float(net(x).abs().max())
    assert onnx_max_abs_diff(path, net, x) <= 1e-4 * max(scale, 1.0)
    assert path.stat().st_size <= 1.05 * mb.stat().st_size + 8192
    proto, types = _weight_inits(path, mb)
    tp = onnx.TensorProto
    float_names = {n for n, t in types.items() if t == tp.FLOAT}
    # no quantized weight stays a float initializer: only the 32-bit layers' and the float tensors'
    quantized = {l.name for l in space.layers if bits[l.name] != 32}
    assert not any(f"{name}.weight" in float_names for name in quantized)
    # 2-bit levels sit at the half-integers: packed UINT8 like 1, 3, 5, 6, 7 bits, never INT2
    assert {tp.INT8, tp.INT4, tp.UINT8, tp.FLOAT16} <= set(types.values()) and tp.INT2 not in set(types.values())
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {21}
    ops = {n.op_type for n in proto.graph.node}
    assert {"DequantizeLinear", "BitShift", "BitwiseAnd", "Cast"} <= ops


def test_int4_and_int8_codes_are_the_files(tmp_path):
    import numpy as np
    from onnx import numpy_helper

    model, space, bits = prepared(TinyResNet(width=4), lambda i, l: 4 if i % 2 else 8)
    mb = tmp_path / "r.mbits"
    export_model(model, space, mb, input_shape=(3, 8, 8))
    path = export_onnx(mb, tmp_path / "r.onnx", model=TinyResNet(width=4))
    proto = onnx.load(str(path))
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {21}
    ints = [i for i in proto.graph.initializer if i.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.INT8)]
    assert len(ints) == len(space.layers)
    for init in ints:
        codes = numpy_helper.to_array(init).astype(np.int64)
        qmax = 7 if init.data_type == onnx.TensorProto.INT4 else 127
        assert codes.min() >= -qmax and codes.max() <= qmax
    assert onnx_max_abs_diff(path, load(mb, model=TinyResNet(width=4)), torch.randn(3, 3, 8, 8)) <= 1e-4


def test_bits_per_structure_and_odd_layers(tmp_path):
    model, space, bits = grouped_tiny_resnet()
    mb = tmp_path / "g.mbits"
    export_model(model.eval(), space, mb, input_shape=(3, 8, 8))
    path = export_onnx(mb, tmp_path / "g.onnx", model=TinyResNet(width=4))
    assert {"Concat", "Gather"} <= {n.op_type for n in onnx.load(str(path)).graph.node}
    assert onnx_max_abs_diff(path, load(mb, model=TinyResNet(width=4)), torch.randn(3, 3, 8, 8)) <= 1e-4

    model, space, _ = prepared(Oddities(), lambda i, l: [5, 16, 1, 8][i], exclude=("keep",))  # Conv1d, tied, shared
    mb = tmp_path / "o.mbits"
    export_model(model, space, mb)
    path = export_onnx(mb, tmp_path / "o.onnx", model=Oddities(), input_shape=(3, 13))
    assert onnx_max_abs_diff(path, load(mb, model=Oddities()), torch.randn(4, 3, 13)) <= 1e-4


class _Embed(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(50, 16)
        self.out = torch.nn.Linear(16, 5)

    def forward(self, x):  # x: (B, T) float token ids
        return self.out(self.emb(x.long()).mean(1))  # (B, 5)


def test_embedding(tmp_path):
    model, space, _ = prepared(_Embed(), lambda i, l: [3, 2][i])
    mb = tmp_path / "e.mbits"
    export_model(model, space, mb)
    path = export_onnx(mb, tmp_path / "e.onnx", model=_Embed(), input_shape=(7,))
    x = torch.randint(0, 50, (4, 7)).float()
    assert onnx_max_abs_diff(path, load(mb, model=_Embed()), x) <= 1e-4


class _Lstm(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 8, batch_first=True)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):  # x: (B, T, 4)
        return self.fc(self.lstm(x)[0][:, -1])


def test_lstm_is_refused_with_a_pointer_to_the_float_form(tmp_path):
    model, space, _ = prepared(_Lstm(), lambda i, l: 4)
    mb = tmp_path / "l.mbits"
    export_model(model, space, mb)
    with pytest.raises(PackedFormError, match="--onnx-float"):
        export_onnx(mb, tmp_path / "l.onnx", model=_Lstm(), input_shape=(5, 4))
    assert not (tmp_path / "l.onnx").exists()
    path = export_onnx(mb, tmp_path / "l.onnx", model=_Lstm(), input_shape=(5, 4), form="float")
    assert onnx_max_abs_diff(path, load(mb, model=_Lstm()), torch.randn(2, 5, 4)) <= 1e-4


def test_unknown_form(tmp_path):
    model, space, _ = prepared(TinyResNet(width=4), lambda i, l: 2)
    export_model(model, space, tmp_path / "r.mbits", input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="packed"):
        export_onnx(tmp_path / "r.mbits", tmp_path / "r.onnx", model=TinyResNet(width=4), form="int3")


class _Mlp(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(200, 64), torch.nn.Linear(64, 48, bias=False), torch.nn.Linear(48, 5)

    def forward(self, x):  # x: (B, T, 200): Linear on 3-D inputs is a MatMul in ONNX
        return self.c(torch.relu(self.b(torch.relu(self.a(x))))).mean(1)  # (B, 5)


def test_matmulnbits_runs_linear_layers_packed(tmp_path):
    from mixbits.export.onnx_matmulnbits import block_size

    assert block_size(200, 4) == 128 and block_size(20, 4) == 32 and block_size(64, 4) == 64 and block_size(256, 8) == 128
    for net, shape in ((_Mlp, (7, 200)), (TinyResNet, (3, 8, 8))):  # MatMul and Gemm
        model, space, bits = prepared(net(), lambda i, l: [4, 8, 2][i % 3])
        mb = tmp_path / "m.mbits"
        export_model(model, space, mb, input_shape=shape)
        path = export_onnx(mb, tmp_path / "m.onnx", model=net(), form="matmulnbits")
        proto = onnx.load(str(path))
        # 4- and 8-bit Linear layers; 2-bit ones (half-integer levels) stay in the packed form
        linear = [l.name for l in space.layers if l.kind == "Linear" and bits[l.name] in (4, 8)]
        assert sum(n.op_type == "MatMulNBits" for n in proto.graph.node) == len(linear) > 0
        smallest = min(l.num_weights for l in space.layers)
        from onnx import numpy_helper

        # no weight left in float: FLOAT initializers are biases, norms and scales only
        assert all(numpy_helper.to_array(i).size < smallest for i in proto.graph.initializer
                   if i.data_type == onnx.TensorProto.FLOAT)
        x = torch.randn(3, *shape)
        with torch.no_grad():
            scale = float(load(mb, model=net())(x).abs().max())
        assert onnx_max_abs_diff(path, load(mb, model=net()), x) <= 1e-5 * max(scale, 1.0)
        assert path.stat().st_size <= 1.05 * mb.stat().st_size + 8192
