"""QONNX: the float graph with each quantized weight passed through ``Quant`` / ``BipolarQuant``.

The form FINN and hls4ml read (QONNX custom operators, domain ``qonnx.custom_op.general``): a
quantized weight stays a FLOAT initializer holding its dequantized values, followed by

* 2..8 bits: ``Quant(w, scale, zeropt=0, bitwidth=b)`` with ``signed=1, narrow=1`` (levels
  ``-qmax..qmax``, as :mod:`mixbits.quant`) and one scale per output channel (shape (C, 1, ...));
* 1 bit: ``BipolarQuant(w, scale)`` (``sign(w) * scale``: mixbits' binary weights);
* 16 and 32 bits: no quantizer (FLOAT initializers; 16-bit values are float16 numbers).

The operator is named ``Quant``, not its newer alias ``IntQuant``: qonnx 1.0.0 registers both, but
its cleanup (``qonnx.util.cleanup``) keeps only ``Quant`` nodes (it folds an ``IntQuant`` of a
constant weight into a float initializer, losing the bitwidth), and FINN and hls4ml read ``Quant``.

A layer with bits per structure gets one quantizer per bitwidth, ``Concat`` and a ``Gather`` that
restores the channel order. The quantizers reproduce the stored values exactly
(``round(w / scale) * scale`` of ``w = code * scale``), so :func:`qonnx.core.onnx_exec.execute_onnx`
gives :func:`mixbits.load`'s outputs. The file is as large as the float model: QONNX carries the
bits as annotations for a hardware flow, not as compression. Needs the ``qonnx`` package only to
execute or clean up the graph (``pip install 'mixbits[qonnx]'``); writing needs ``onnx``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..quant import HALF_BITS, level_offset
from .fileformat import MbitsFile
from .layer_runs import Run
from .onnx_packed import WeightGraphBuilder, replace_weights_
from .packed_values import run_values

__all__ = ["qonnx_graph", "QONNX_DOMAIN", "execute_qonnx"]

QONNX_DOMAIN = "qonnx.custom_op.general"


class QonnxGraphBuilder(WeightGraphBuilder):
    """Weights as FLOAT initializers followed by Quant / BipolarQuant nodes."""

    def run(self, run: Run) -> str:
        values = run_values(run).numpy()
        w = self.init(values, "w")
        if run.bits in (HALF_BITS, 32):
            return w
        assert run.scales is not None
        scale = self.init(run.scales.float().numpy().reshape((-1,) + (1,) * (len(run.shape) - 1)), "scale")
        if run.bits == 1:
            return self.node("BipolarQuant", [w, scale], domain=QONNX_DOMAIN)
        # Quant computes (clip(round(w / scale + zero), lo, hi) - zero) * scale. 2 bits: zero = -1/2 and the full
        # signed range -2..1 give the four levels (c + 1/2) * scale; wider: zero = 0 and the narrow range -qmax..qmax.
        zero = -level_offset(run.bits)
        return self.node("Quant", [w, scale, self.const(f"zero{run.bits}", np.array(zero, np.float32)),
                                      self.const(f"bits{run.bits}", np.array(float(run.bits), np.float32))],
                         domain=QONNX_DOMAIN, signed=1, narrow=0 if run.bits == 2 else 1, rounding_mode="ROUND")


def qonnx_graph(proto: Any, f: MbitsFile) -> Any:
    """The QONNX form of a float graph exported (weights kept apart) from ``mixbits.load(f)``.

    Raises:
        PackedFormError: (a ValueError) a quantized weight that is no initializer of the graph
            (an LSTM's gates): QONNX export supports Conv, Linear, Embedding and the like only.
    """
    import onnx

    replace_weights_(proto, f, QonnxGraphBuilder(onnx, int2=False), "QONNX")
    proto.opset_import.append(onnx.helper.make_opsetid(QONNX_DOMAIN, 1))
    return proto


def execute_qonnx(path: str, inputs: np.ndarray) -> np.ndarray:
    """Run a QONNX file with ``qonnx``'s executor on one batch (B, *input_shape) and return the output.

    Raises:
        ImportError: ``qonnx`` is not installed.
    """
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError:
        raise ImportError("running QONNX needs the qonnx package: pip install 'mixbits[qonnx]'") from None
    mw = ModelWrapper(path)
    for v in (mw.graph.input[0], mw.graph.output[0]):  # the executor needs a concrete batch size
        v.type.tensor_type.shape.dim[0].dim_value = int(inputs.shape[0])
    mw = mw.transform(InferShapes())
    name_in, name_out = mw.graph.input[0].name, mw.graph.output[0].name
    return execute_onnx(mw, {name_in: np.ascontiguousarray(inputs, dtype=np.float32)})[name_out]
