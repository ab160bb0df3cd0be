"""Packed export: a searched model -> a ``.mbits`` file that really is as small as promised.

Module map:

- ``pack``         bit packing of integer codes at exactly 1..8 bits (pure array math).
- ``fileformat``   the ``.mbits`` layout (safetensors + JSON manifest): write, read, validate, decode.
- ``exporter``     ``export_model(model, space, path)``: a prepared model at fixed bits -> file; size check.
- ``loader``       ``load(path, model=None, trust_code=False, packed=False)``: file -> nn.Module; runs no code
                   the file names.
- ``run_export``   rebuild a run folder's fine-tuned model and export it (``mixbits export``).
- ``preprocessing`` the optional input normalisation and class names of the manifest.
- ``layer_runs``   a file's quantized weights as stored runs (codes, scales), not dequantized.
- ``packed_values`` torch unpacking of a run; ``packed_model`` ``load(packed=True)``.
- ``onnx_export``  ``export_onnx(path, out, form=...)``: packed, MatMulNBits, float or QONNX graph; bits and
                   preprocessing in its metadata.
- ``onnx_packed``  the packed form: codes + DequantizeLinear / bit unpacking in standard operators.
- ``onnx_matmulnbits`` the packed form with 2/4/8-bit Linear layers as onnxruntime's MatMulNBits.
- ``qonnx_export`` QONNX (Quant / BipolarQuant weights) for FINN and hls4ml.
- ``summary``      ``describe(path)``: per-layer bits and sizes (``mixbits inspect``).
"""

from .exporter import ExportResult, export_model, model_source, size_bound_bytes
from .fileformat import FORMAT_VERSION, MbitsFile, MbitsFormatError, read_mbits
from .loader import CodeNotTrustedError, build_model, load
from .onnx_export import ONNX_FORMS, compare_onnx, export_onnx, onnx_bits, onnx_max_abs_diff, onnx_preprocessing
from .preprocessing import Preprocessing
from .run_export import RunModel, export_run, load_run_model, run_test_loader
from .summary import describe

__all__ = [
    "FORMAT_VERSION", "CodeNotTrustedError", "ExportResult", "MbitsFile", "MbitsFormatError", "RunModel", "build_model", "compare_onnx", "describe",
    "export_model", "export_onnx", "export_run", "load", "load_run_model", "model_source", "onnx_bits",
    "onnx_max_abs_diff", "read_mbits", "ONNX_FORMS", "onnx_preprocessing", "Preprocessing", "run_test_loader",
    "size_bound_bytes",
]
