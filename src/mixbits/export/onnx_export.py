"""ONNX export of a ``.mbits`` file: the dequantized graph, per-layer bits in ``metadata_props``.

ONNX has no 1..7-bit weight type that every runtime executes, so the graph holds
the dequantized float weights (the values :func:`mixbits.load` rebuilds) and the
bits stay in the metadata (``mixbits.bits.<layer>``), for a deployment tool that
re-quantizes. A layer with bits per structure has its structures' bits there as a
comma-separated list (``"2,2,8,1"``) and its group size (output channels per
structure, along its channel dimension) in ``mixbits.group_size.<layer>``.
Uses the TorchScript-based exporter (``dynamo=False``): it needs
``onnx`` only, not ``onnxscript``. ``onnxruntime`` is needed only to check.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from ..runfiles import atomic_write
from .fileformat import FORMAT_VERSION, Bits, MbitsFile, read_mbits
from .loader import load

__all__ = ["export_onnx", "compare_onnx", "onnx_max_abs_diff", "onnx_bits"]

OPSET_VERSION = 17
_INSTALL_HINT = "install the export extra: pip install 'mixbits[export]'"


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"the ONNX export needs the {name!r} package: {_INSTALL_HINT}") from None


def export_onnx(mbits: str | Path | MbitsFile, onnx_path: str | Path, *, model: nn.Module | None = None,
                input_shape: Sequence[int] | None = None, trust_code: bool = False) -> Path:
    """Write the model of a ``.mbits`` file as ONNX (atomically), with a dynamic batch dimension.

    Args:
        mbits: the ``.mbits`` file (or an already read one).
        onnx_path: the ONNX file to write.
        model: a plain instance of the architecture, when the file has no model recipe.
        input_shape: one sample's shape, e.g. (3, 32, 32); default the manifest's ``input_shape``.
        trust_code: let the file's model recipe import code (see :func:`mixbits.load`).

    Returns:
        ``onnx_path``.

    Raises:
        ValueError: no input shape known, or a file that does not load (see :func:`mixbits.load`).
        ImportError: ``onnx`` is not installed.
    """
    onnx = _import("onnx")
    f = mbits if isinstance(mbits, MbitsFile) else read_mbits(mbits)
    shape = input_shape if input_shape is not None else f.manifest.get("input_shape")
    if not shape:
        raise ValueError(f"{f.path!r} records no input shape: pass input_shape, e.g. (3, 32, 32)")
    net = load(f, model=model, trust_code=trust_code)
    example = torch.zeros(2, *[int(s) for s in shape])  # (B, *input_shape); B=2 so no size-1 dim is baked in

    def writer(tmp: str) -> None:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript.
            warnings.simplefilter("ignore", DeprecationWarning)
            # Strided slices (ResNet option-A shortcuts) are exported unfolded: correct, only slower.
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            torch.onnx.export(net, (example,), tmp, dynamo=False, opset_version=OPSET_VERSION,
                              input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        proto = onnx.load(tmp)
        props = {"mixbits.format_version": str(FORMAT_VERSION)}
        for rec in f.layers:
            props[f"mixbits.bits.{rec.name}"] = ",".join(str(b) for b in rec.group_bits)
            if rec.grouped:
                props[f"mixbits.group_size.{rec.name}"] = str(rec.group_size)
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    return atomic_write(onnx_path, writer)


def onnx_bits(onnx_path: str | Path) -> dict[str, Bits]:
    """{layer name: bits} from an exported ONNX file's metadata: an int, or for a layer with
    bits per structure (one with ``mixbits.group_size.<layer>``) a tuple, one per structure."""
    onnx = _import("onnx")
    proto = onnx.load(str(onnx_path), load_external_data=False)
    prefix, group_prefix = "mixbits.bits.", "mixbits.group_size."
    grouped = {p.key[len(group_prefix):] for p in proto.metadata_props if p.key.startswith(group_prefix)}
    out: dict[str, Bits] = {}
    for p in proto.metadata_props:
        if p.key.startswith(prefix):
            name = p.key[len(prefix):]
            per = tuple(int(b) for b in p.value.split(","))
            out[name] = per if name in grouped else per[0]
    return out


@torch.no_grad()
def compare_onnx(onnx_path: str | Path, model: nn.Module, batches: Iterable) -> dict[str, float | None]:
    """Run the ONNX file in onnxruntime and ``model`` in PyTorch on the same batches.

    Args:
        onnx_path: the ONNX file.
        model: the PyTorch model it was exported from.
        batches: input tensors (B, *input_shape), or (inputs, labels) pairs.

    Returns:
        {"max_abs_diff": largest |onnx - torch| output difference,
         "onnx_accuracy", "torch_accuracy": top-1 accuracies when labels are given, else None}.

    Raises:
        ImportError: ``onnxruntime`` is not installed.
    """
    ort = _import("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    worst, right_onnx, right_torch, seen, labelled = 0.0, 0, 0, 0, True
    for batch in batches:
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        got = torch.from_numpy(session.run(None, {name: x.detach().cpu().float().numpy()})[0])  # (B, classes)
        want = model(x.to(device)).float().cpu()  # (B, classes)
        worst = max(worst, float((got - want).abs().max()))
        if y is None:
            labelled = False
        else:
            y = y.cpu()
            right_onnx += int((got.argmax(1) == y).sum())
            right_torch += int((want.argmax(1) == y).sum())
            seen += int(y.shape[0])
    model.train(was_training)
    has_acc = labelled and seen > 0
    return {"max_abs_diff": worst, "onnx_accuracy": right_onnx / seen if has_acc else None,
            "torch_accuracy": right_torch / seen if has_acc else None}


def onnx_max_abs_diff(onnx_path: str | Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest |onnxruntime output - PyTorch output| over ``inputs`` (shape (B, *input_shape))."""
    return float(compare_onnx(onnx_path, model, [inputs])["max_abs_diff"])  # type: ignore[arg-type]
