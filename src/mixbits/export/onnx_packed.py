"""Packed ONNX: the float graph's quantized weights replaced by their stored codes, dequantized in the graph.

Standard operators only. Each quantized weight initializer of the exported float graph is
found by value (the weights :func:`mixbits.load` builds, or their transpose where the exporter
folded one) and replaced by nodes that compute the same float32 values from the file's codes:

* 4- and 8-bit runs: an ``INT4``/``INT8`` initializer of the signed codes and ``DequantizeLinear``
  with one float32 scale per output channel (``axis=0``);
* 1-, 2-, 3-, 5-, 6- and 7-bit runs (no ONNX type holds them, or, at 2 bits, levels at the
  half-integers ``(c + 1/2) * scale`` that ``DequantizeLinear``'s integer zero point cannot express):
  the ``.mbits`` bytes themselves as a ``UINT8`` stream, unpacked with
  ``BitShift``/``BitwiseAnd``/``Cast``/``MatMul`` (bit weights), then the code offset subtracted
  (minus the half step at 2 bits) and the channel scale applied (binary: ``(2 v - 1) * scale``);
* 16-bit runs: a ``FLOAT16`` initializer and ``Cast``; 32-bit ones stay ``FLOAT``;
* a layer with bits per structure: one such part per bitwidth, ``Concat`` along the channels and a
  ``Gather`` that puts the channels back in order.

The arithmetic is that of :func:`mixbits.quant.dequantize` in float32, so the graph's weights are
those of :func:`mixbits.load`, bit for bit. One runtime caveat: with its default session options,
onnxruntime (1.32) fuses some ``DequantizeLinear`` (INT8) + ``MatMul`` pairs into a ``MatMulNBits``
that quantizes the activations to int8 (``accuracy_level`` 4): faster, but ~1e-3 relative off.
``SessionOptions.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "0")`` keeps
those exact. Convolutions are not fused. The graph is opset 21 (``INT4``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..quant import FLOAT_BITS, HALF_BITS, level_offset
from .fileformat import MbitsFile
from .layer_runs import LayerRuns, Run, layer_runs
from .pack import code_offset
from .packed_values import layer_weight, unpack_values

__all__ = ["WeightGraphBuilder", "pack_graph", "replace_weights_", "weights_by_value", "compact_names_", "PACKED_OPSET",
           "INT2_OPSET", "PackedFormError"]

PACKED_OPSET = 21  # INT4 and per-axis DequantizeLinear of every integer type
INT2_OPSET = 25  # INT2


class PackedFormError(ValueError):
    """A weight that the packed ONNX graph cannot hold (the exporter transformed it beyond a transpose)."""


def _signed_raw(codes: np.ndarray, bits: int) -> bytes:
    """ONNX raw data of signed codes as INT8/INT4/INT2: two's complement, element 0 in the lowest bits."""
    if bits == 8:
        return codes.astype(np.int8).tobytes()
    per = 8 // bits
    u = (codes.astype(np.int16) & ((1 << bits) - 1)).astype(np.uint8).reshape(-1)  # (n,)
    pad = (-u.size) % per
    u = np.concatenate([u, np.zeros(pad, dtype=np.uint8)]).reshape(-1, per)  # (ceil(n/per), per)
    out = np.zeros(u.shape[0], dtype=np.uint8)
    for k in range(per):
        out |= u[:, k] << np.uint8(k * bits)
    return out.tobytes()


class WeightGraphBuilder:
    """Nodes and initializers appended to a graph, with shared constants made once."""

    def __init__(self, onnx: Any, int2: bool) -> None:
        self.onnx, self.int2 = onnx, int2
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self.consts: dict[str, str] = {}
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"m{self.count}"  # short: a ResNet-20 has a few hundred of these

    def init(self, array: np.ndarray, stem: str) -> str:
        array = np.ascontiguousarray(array)
        if array.nbytes <= 64:  # shapes, slice ends: made once per distinct value
            return self.const(f"{array.dtype}{array.shape}{array.tobytes().hex()}", array)
        name = self.name(stem)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def const(self, key: str, array: np.ndarray) -> str:
        if key not in self.consts:
            name = self.name("const")
            self.inits.append(self.onnx.numpy_helper.from_array(np.ascontiguousarray(array), name))
            self.consts[key] = name
        return self.consts[key]

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self.name(op.lower())
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [out], **attrs))
        return out

    def typed(self, codes: np.ndarray, bits: int) -> str:
        """An INT8/INT4/INT2 initializer of signed codes, shape of ``codes``."""
        tp = self.onnx.TensorProto
        t = tp()
        t.name = self.name(f"int{bits}")
        t.data_type = {8: tp.INT8, 4: tp.INT4, 2: tp.INT2}[bits]
        t.dims.extend(codes.shape)
        t.raw_data = _signed_raw(codes, bits)
        self.inits.append(t)
        return t.name

    def run(self, run: Run) -> str:
        """Nodes whose output is the run's float32 values, shape ``run.shape``."""
        tp = self.onnx.TensorProto
        if run.bits == FLOAT_BITS:
            return self.init(run.values.numpy(), "w32")
        if run.bits == HALF_BITS:
            return self.node("Cast", [self.init(run.values.numpy(), "w16")], to=tp.FLOAT)
        assert run.codes is not None and run.scales is not None
        # the file's float16 scales, cast to float32 in the graph (exact): half the bytes of float32 scales
        if run.bits in (4, 8):
            codes = (unpack_values(run.codes, run.bits, run.numel) - code_offset(run.bits)).numpy()
            q = self.typed(codes.reshape(run.shape), run.bits)
            scale = self.node("Cast", [self.init(run.scales.numpy(), "scale")], to=tp.FLOAT)  # (c,)
            return self.node("DequantizeLinear", [q, scale], axis=0)
        # a UINT8 stream of values at run.bits bits (the file's bytes), unpacked bit by bit
        n, b = run.numel, run.bits
        bytes2d = self.init(run.codes.numpy()[:, None], f"u{b}")  # (nb, 1)
        shifted = self.node("BitShift", [bytes2d, self.const("sh8", np.arange(8, dtype=np.uint8))],
                            direction="RIGHT")  # (nb, 8)
        bits = self.node("BitwiseAnd", [shifted, self.const("one_u8", np.array(1, np.uint8))])  # (nb, 8)
        if n * b < 8 * run.codes.numel():  # padding bits at the end: flatten, cut
            flat = self.node("Reshape", [bits, self.const("flat", np.array([-1], np.int64))])  # (nb * 8,)
            bits = self.node("Slice", [flat, self.const("zero_i64", np.array([0], np.int64)),
                                       self.init(np.array([n * b], np.int64), "end")])  # (n * b,)
        view = self.node("Cast", [self.init(run.scales.numpy().reshape((-1,) + (1,) * (len(run.shape) - 1)), "scale")],
                         to=tp.FLOAT)  # (c, 1, ...)
        if b == 1:
            shaped = self.node("Reshape", [bits, self.init(np.array(run.shape, np.int64), "shape")])  # (c, ...)
            v = self.node("Cast", [shaped], to=tp.FLOAT)  # (c, ...) in {0, 1}
            code = self.node("Sub", [self.node("Mul", [v, self.const("two_f", np.array(2.0, np.float32))]),
                                     self.const("one_f", np.array(1.0, np.float32))])  # (c, ...) in {-1, 1}
            return self.node("Mul", [code, view])
        per_value = self.node("Reshape", [bits, self.init(np.array([n, b], np.int64), "nb")])  # (n, b)
        v = self.node("MatMul", [self.node("Cast", [per_value], to=tp.FLOAT),
                                 self.const(f"pow{b}", (2.0 ** np.arange(b, dtype=np.float32))[:, None])])  # (n, 1)
        offset = float(code_offset(b)) - level_offset(b)  # 2 bits: (v - 2 + 1/2), exact in float32
        code = self.node("Sub", [v, self.const(f"off{b}", np.array(offset, np.float32))])
        shaped = self.node("Reshape", [code, self.init(np.array(run.shape, np.int64), "shape")])  # (c, ...)
        return self.node("Mul", [shaped, view])

    def layer(self, lr: LayerRuns) -> str:
        """Nodes whose output is the layer's float32 weight in the state-dict layout."""
        rec = lr.record
        if len(lr.runs) == 1:
            out = self.run(lr.runs[0])
        else:
            cat = self.node("Concat", [self.run(r) for r in lr.runs], axis=0)  # (C, ...), runs in file order
            order = np.concatenate([r.rows for r in lr.runs])  # cat row k is channel order[k]
            perm = np.empty_like(order)
            perm[order] = np.arange(order.size)
            out = self.node("Gather", [cat, self.init(perm.astype(np.int64), "perm")], axis=0)
        d = rec.channel_dim
        if lr.channels_first and d != 0:
            out = self.node("Transpose", [out], perm=list(range(1, d + 1)) + [0] + list(range(d + 1, len(rec.shape))))
        return out


def weights_by_value(f: MbitsFile) -> dict[tuple, tuple[LayerRuns, bool]]:
    """{(shape, bytes): (layer, transposed)} of every quantized weight not kept at 32 bits, and of 2-D transposes."""
    table: dict[tuple, tuple[LayerRuns, bool]] = {}
    for lr in layer_runs(f):
        if not lr.record.grouped and lr.record.bits == FLOAT_BITS:
            continue
        w = layer_weight(lr).contiguous().numpy()
        table.setdefault((w.shape, w.tobytes()), (lr, False))
        if w.ndim == 2:
            wt = np.ascontiguousarray(w.T)
            table.setdefault((wt.shape, wt.tobytes()), (lr, True))
    return table


def replace_weights_(proto: Any, f: MbitsFile, builder: WeightGraphBuilder, form: str,
                     skip: frozenset[str] = frozenset()) -> None:
    """Replace every quantized weight initializer of ``proto`` by the nodes ``builder.layer`` makes, in place.

    Args:
        skip: initializer names to leave as they are (a later pass rewrites them), with their layers
            counted as held.

    Raises:
        PackedFormError: a quantized weight that is no initializer of the graph.
    """
    import onnx
    from onnx import numpy_helper

    table = weights_by_value(f)
    found: set[str] = set()
    keep = []
    for init in proto.graph.initializer:
        hit = None
        if init.data_type == onnx.TensorProto.FLOAT:
            arr = numpy_helper.to_array(init)
            hit = table.get((arr.shape, np.ascontiguousarray(arr).tobytes()))
        if hit is None or init.name in skip:
            keep.append(init)
            if hit is not None:
                found.add(hit[0].record.name)
            continue
        lr, transposed = hit
        out = builder.layer(lr)
        if transposed:
            out = builder.node("Transpose", [out], perm=[1, 0])
        if builder.nodes and builder.nodes[-1].output[0] == out:
            builder.nodes[-1].output[0] = init.name
        else:  # a weight that is a plain initializer (a 32-bit single run never gets here)
            builder.nodes.append(onnx.helper.make_node("Identity", [out], [init.name]))
        found.add(lr.record.name)
    missing = [lr.record.name for lr in layer_runs(f) if lr.record.name not in found
               and (lr.record.grouped or lr.record.bits != FLOAT_BITS)]
    if missing:
        raise PackedFormError(
            f"the {form} ONNX form cannot hold layer(s) {', '.join(missing[:5])}: the ONNX exporter transformed "
            f"their weights (e.g. an LSTM's gates are reordered), so no initializer holds them; export the float "
            f"form instead (mixbits export --onnx-float, or form='float')")
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep + builder.inits)
    nodes = list(builder.nodes) + list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def pack_graph(proto: Any, f: MbitsFile, *, skip: frozenset[str] = frozenset(), compact: bool = True) -> Any:
    """The packed form of a float graph exported from ``mixbits.load(f)``.

    Args:
        proto: the float ``onnx.ModelProto`` (weights as FLOAT initializers named by the exporter).
        f: the ``.mbits`` file it was exported from.
        skip: initializer names left as float (the MatMulNBits pass rewrites them).
        compact: shorten the names (:func:`compact_names_`); the MatMulNBits pass does it after its rewrite.

    Returns:
        a new ModelProto at opset 21 (25 with a 2-bit run), every quantized weight stored packed.

    Raises:
        PackedFormError: a quantized weight that is no initializer of the graph (an LSTM's weights,
            which the exporter reorders into gates): use the float form for such a model.
    """
    import onnx
    from onnx import version_converter

    proto = version_converter.convert_version(proto, PACKED_OPSET)
    replace_weights_(proto, f, WeightGraphBuilder(onnx, False), "packed", skip)
    proto.ir_version = 10
    if compact:
        compact_names_(proto)
    return proto


def compact_names_(proto: Any) -> None:
    """Drop node names, doc strings and shape annotations, and name every tensor but the graph's input and
    output ``t0``, ``t1``...

    The exporter's names (``/stage1/stage1.0/conv1/Conv_output_0``, ``layer3.0.bn1.running_mean``, each
    written where it is made and where it is used) take 10-20% of a ResNet-20's packed file; the layers'
    bits stay in the metadata under their names.
    """
    g = proto.graph
    keep = {v.name for v in g.input} | {v.name for v in g.output}
    rename: dict[str, str] = {}
    for init in g.initializer:
        if init.name not in keep:
            rename[init.name] = init.name = f"t{len(rename)}"
    for node in g.node:
        node.name, node.doc_string = "", ""
        for i, out in enumerate(node.output):
            if out and out not in keep:
                rename[out] = node.output[i] = f"t{len(rename)}"
        for i, inp in enumerate(node.input):
            node.input[i] = rename.get(inp, inp)
    del g.value_info[:]
    proto.doc_string = g.doc_string = ""
    _constants_to_initializers_(proto)
    _drop_default_attributes_(proto)


# attributes the exporter writes with their default values (ONNX operator specs): (operator, name) -> is default
_DEFAULTS = {
    ("Conv", "group"): lambda v: v == 1,
    ("Conv", "dilations"): lambda v: all(x == 1 for x in v),
    ("BatchNormalization", "momentum"): lambda v: abs(v - 0.9) < 1e-6,
    ("BatchNormalization", "training_mode"): lambda v: v == 0,
}


def _drop_default_attributes_(proto: Any) -> None:
    """Drop the attributes that only restate their default (a ResNet-20 writes 38 of them)."""
    from onnx import helper

    for node in proto.graph.node:
        keep = [a for a in node.attribute if not _DEFAULTS.get((node.op_type, a.name), lambda v: False)(
            helper.get_attribute_value(a))]
        if len(keep) != len(node.attribute):
            del node.attribute[:]
            node.attribute.extend(keep)


def _constants_to_initializers_(proto: Any) -> None:
    """``Constant`` nodes holding a tensor become initializers, one per distinct value."""
    from onnx import helper, numpy_helper

    g = proto.graph
    by_value: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    nodes = []
    for node in g.node:
        attrs = {a.name: a for a in node.attribute}
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or set(attrs) != {"value"} \
                or node.output[0] in {o.name for o in g.output}:
            nodes.append(node)
            continue
        t = helper.get_attribute_value(attrs["value"])
        arr = numpy_helper.to_array(t)
        key = (t.data_type, tuple(t.dims), np.ascontiguousarray(arr).tobytes())
        if key not in by_value:
            by_value[key] = node.output[0]
            g.initializer.append(numpy_helper.from_array(arr, node.output[0]))
        alias[node.output[0]] = by_value[key]
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = alias.get(name, name)
    del g.node[:]
    g.node.extend(nodes)


