"""Packed export: a searched model -> a ``.mbits`` file that really is as small as promised.

Module map:

- ``pack``         bit packing of integer codes at exactly 1..8 bits (pure array math).
- ``fileformat``   the ``.mbits`` layout documented (safetensors + JSON manifest); re-exports the modules below.
- ``layout``       its constants, ``MbitsFormatError`` and the checksum.
- ``records``      ``LayerRecord``, ``FloatRecord``, ``MbitsFile``: what a file holds, as data.
- ``group_codes``  the 4-bit per-structure bitwidth codes.
- ``writer``       weights -> blobs and manifest tables -> an atomically written file.
- ``reader``       file -> checksum -> manifest -> ``MbitsFile`` (``read_mbits``).
- ``bounds``       the manifest's size checked against the file before anything is built.
- ``validate``     every manifest field checked: types, bounds, consistency, one key per tensor.
- ``values``       only values the exporter writes: scales in range, finite weights, sane BatchNorm statistics.
- ``decode``       ``MbitsFile`` -> float state dict.
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

from .._imports import lazy_attributes

# Public names resolve on first use (PEP 562), so the modules below the model surgery (records, writer:
# the header bound that mixbits.space needs) import without pulling in the exporter, which imports space.
_LAZY = {
    "ExportResult": "exporter", "export_model": "exporter", "model_source": "exporter", "size_bound_bytes": "exporter",
    "FORMAT_VERSION": "fileformat", "MbitsFile": "fileformat", "MbitsFormatError": "fileformat",
    "read_mbits": "fileformat",
    "CodeNotTrustedError": "loader", "build_model": "loader", "load": "loader",
    "ONNX_FORMS": "onnx_export", "compare_onnx": "onnx_export", "export_onnx": "onnx_export",
    "onnx_bits": "onnx_export", "onnx_max_abs_diff": "onnx_export", "onnx_preprocessing": "onnx_export",
    "Preprocessing": "preprocessing",
    "RunModel": "run_export", "export_run": "run_export", "load_run_model": "run_export",
    "run_test_loader": "run_export",
    "describe": "summary",
}


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


__all__ = [
    "FORMAT_VERSION", "CodeNotTrustedError", "ExportResult", "MbitsFile", "MbitsFormatError", "RunModel", "build_model", "compare_onnx", "describe",
    "export_model", "export_onnx", "export_run", "load", "load_run_model", "model_source", "onnx_bits",
    "onnx_max_abs_diff", "read_mbits", "ONNX_FORMS", "onnx_preprocessing", "Preprocessing", "run_test_loader",
    "size_bound_bytes",
]
