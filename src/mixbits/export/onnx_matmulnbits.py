"""The packed ONNX form with 2-, 4- and 8-bit ``Linear`` layers as onnxruntime's ``com.microsoft::MatMulNBits``.

``MatMulNBits(A, B, scales)`` multiplies by a weight of ``N`` rows stored as unsigned ``bits``-bit
values in blocks of ``block_size`` along ``K``, one scale per block and the default zero point
``2**(bits - 1)``; onnxruntime's CPU kernel does not materialise the float weight. mixbits' codes
``-qmax..qmax`` become ``code + 2**(bits - 1)`` (zero point subtracted again: the same values), the
rows are padded to a whole number of blocks with the zero point, and the channel's scale is
repeated for each of its blocks; the block size (16, 32, 64 or 128 values along ``K``) is the one
that stores the layer in the fewest bytes.

A ``Linear`` layer qualifies when it has one bitwidth in (2, 4, 8), its weight initializer feeds
only one ``Gemm`` (``transB=1``, ``alpha = beta = 1``; its bias becomes an ``Add``) or one ``MatMul``
(the exporter's transposed weight, for inputs of more than two dimensions). Every other weight is
packed as in :mod:`mixbits.export.onnx_packed`. onnxruntime only: other runtimes do not know the
operator. The kernel accumulates in another order than PyTorch: outputs agree to ~1e-6 relative.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .fileformat import MbitsFile
from .layer_runs import LayerRuns
from .onnx_packed import compact_names_, pack_graph, weights_by_value
from .pack import code_offset
from .packed_values import unpack_values

__all__ = ["matmulnbits_graph", "MATMULNBITS_BITS", "BLOCK_SIZES", "block_size"]

MATMULNBITS_BITS = (4, 8)  # 2-bit levels sit at the half-integers, which its integer zero point cannot express
BLOCK_SIZES = (16, 32, 64, 128)  # block sizes onnxruntime's CPU kernels (MLAS) support for every bitwidth


def block_size(k: int, bits: int) -> int:
    """The block size that stores a row of ``k`` values at ``bits`` bits (codes and float32 scales) in the
    fewest bytes; the largest of equals (fewer blocks run faster)."""
    def row_bytes(bs: int) -> int:
        blocks = -(-k // bs)
        return blocks * (bs * bits // 8 + 4)
    return min(reversed(BLOCK_SIZES), key=row_bytes)


def _candidates(proto: Any, f: MbitsFile) -> dict[str, tuple[Any, LayerRuns]]:
    """{weight initializer name: (its Gemm/MatMul node, layer)} for the Linear layers that qualify."""
    from onnx import helper, numpy_helper

    table = weights_by_value(f)
    inits = {i.name: i for i in proto.graph.initializer}
    uses: dict[str, int] = {}
    for node in proto.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    out = {}
    for node in proto.graph.node:
        if node.op_type not in ("Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        arr = numpy_helper.to_array(inits[name])
        hit = table.get((arr.shape, np.ascontiguousarray(arr).tobytes()))
        if hit is None or uses[name] != 1:
            continue
        lr, transposed = hit
        rec = lr.record
        if rec.grouped or rec.bits not in MATMULNBITS_BITS or rec.channel_dim != 0 or len(rec.shape) != 2:
            continue
        if node.op_type == "Gemm":
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if transposed or attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 \
                    or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                continue
        elif not transposed:
            continue
        out[name] = (node, lr)
    return out


def _blocks(lr: LayerRuns) -> tuple[np.ndarray, np.ndarray]:
    """(B uint8 (N, blocks, block_size * bits / 8), scales float32 (N * blocks,)) of a one-run Linear layer."""
    run = lr.runs[0]
    n, k = run.shape
    bits = run.bits
    codes = (unpack_values(run.codes, bits, run.numel) - code_offset(bits)).numpy().reshape(n, k)  # (N, K)
    bs = block_size(k, bits)
    blocks = -(-k // bs)
    zero = 1 << (bits - 1)
    q = np.full((n, blocks * bs), zero, dtype=np.uint8)  # padding at the zero point: value 0
    q[:, :k] = (codes + zero).astype(np.uint8)
    per = 8 // bits
    q = q.reshape(n, -1, per)  # (N, K'/per, per), element 0 in the lowest bits
    packed = np.zeros(q.shape[:2], dtype=np.uint8)
    for j in range(per):
        packed |= (q[:, :, j] << np.uint8(j * bits)).astype(np.uint8)
    scales = np.repeat(run.scales.float().numpy(), blocks).astype(np.float32)  # (N * blocks,)
    return packed.reshape(n, blocks, bs * bits // 8), scales


def matmulnbits_graph(proto: Any, f: MbitsFile) -> Any:
    """The packed form of a float graph (see :func:`mixbits.export.onnx_packed.pack_graph`) with the
    qualifying Linear layers as ``MatMulNBits``."""
    import onnx
    from onnx import helper, numpy_helper

    cands = _candidates(proto, f)
    proto = pack_graph(proto, f, skip=frozenset(cands), compact=False)
    g = proto.graph
    new_inits = []
    replaced: dict[str, list[Any]] = {}
    for name, (_, lr) in cands.items():
        node = next(n for n in g.node if n.op_type in ("Gemm", "MatMul") and len(n.input) > 1 and n.input[1] == name)
        n, k = lr.record.shape
        b, s = _blocks(lr)
        new_inits += [numpy_helper.from_array(b, f"{name}.q"), numpy_helper.from_array(s, f"{name}.scales")]
        out = node.output[0]
        has_bias = node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]
        mm = helper.make_node("MatMulNBits", [node.input[0], f"{name}.q", f"{name}.scales"],
                              [out + "_mm" if has_bias else out], domain="com.microsoft", K=k, N=n,
                              bits=lr.record.bits, block_size=block_size(k, lr.record.bits))
        replaced[out] = [mm] + ([helper.make_node("Add", [out + "_mm", node.input[2]], [out])] if has_bias else [])
    nodes = []
    for node in g.node:
        nodes += replaced.get(node.output[0], [node]) if node.op_type in ("Gemm", "MatMul") else [node]
    del g.node[:]
    g.node.extend(nodes)
    keep = [i for i in g.initializer if i.name not in cands]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    if cands:
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    compact_names_(proto)
    return proto
