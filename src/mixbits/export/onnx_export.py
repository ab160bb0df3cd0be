"""ONNX export of a ``.mbits`` file: packed (default) or float, per-layer bits in ``metadata_props``.

Forms (``form=``):

* ``"packed"``: standard operators only, each quantized weight stored as its codes and dequantized
  in the graph (``DequantizeLinear`` of INT8/INT4/INT2 codes, or bit-unpacking of a UINT8 stream
  for 1-, 3-, 5-, 6-, 7-bit codes; see :mod:`mixbits.export.onnx_packed`): about the ``.mbits``
  file's size, the same weights as :func:`mixbits.load`;
* ``"float"``: the dequantized float32 weights, opset 17, for runtimes without DequantizeLinear
  of those types (the size of the float model);
* ``"matmulnbits"``: the packed form whose 2-, 4- and 8-bit ``Linear`` layers run as onnxruntime's
  ``com.microsoft::MatMulNBits`` (onnxruntime only; :mod:`mixbits.export.onnx_matmulnbits`);
* ``"qonnx"``: QONNX for FPGA flows (FINN, hls4ml): float weights through ``Quant`` /
  ``BipolarQuant`` nodes with each layer's bitwidth and scales (:mod:`mixbits.export.qonnx_export`).

The bits stay in the metadata (``mixbits.bits.<layer>``): a layer with bits per structure has
its structures' bits there as a comma-separated list (``"2,2,8,1"``) and its group size in
``mixbits.group_size.<layer>``; ``mixbits.form`` names the form and ``mixbits.preprocessing``
holds the input normalisation and class names (JSON) when the file records them; with
``normalize=True`` the graph also applies ``(x - mean) / std`` itself (its input is then the image
scaled to [0, 1]; ``mixbits.normalized_in_graph`` is ``"1"``).
Uses the TorchScript-based exporter (``dynamo=False``): it needs ``onnx`` only, not
``onnxscript``. ``onnxruntime`` is needed only to check.
"""

from __future__ import annotations

import importlib
import io
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..registry import Registry
from ..runfiles import atomic_write
from .fileformat import FORMAT_VERSION, Bits, MbitsFile, read_mbits
from .loader import load
from .preprocessing import Preprocessing, parse_preprocessing

__all__ = ["export_onnx", "compare_onnx", "onnx_bits", "onnx_max_abs_diff", "onnx_preprocessing", "ONNX_FORMS",
           "float_graph", "NormalizedModel"]

OPSET_VERSION = 17
_INSTALL_HINT = "install the export extra: pip install 'mixbits[export]'"


def _import(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        raise ImportError(f"the ONNX export needs the {name!r} package: {_INSTALL_HINT}") from None


class NormalizedModel(nn.Module):
    """``net((x - mean) / std)``: the input normalisation inside the exported graph."""

    def __init__(self, net: nn.Module, pre: Preprocessing) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32), persistent=False)  # (C,) or (1,)
        self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32), persistent=False)
        self.train(net.training)  # a wrapper must not switch an eval-mode model to training mode

    def forward(self, x):  # x: (B, C, ...) scaled to [0, 1]
        view = (1, -1) + (1,) * (x.dim() - 2)
        return self.net((x - self.mean.view(view)) / self.std.view(view))


def float_graph(net: nn.Module, input_shape: Sequence[int], *, keep_weights: bool = False) -> Any:
    """The float ONNX graph (opset 17, dynamic batch) of ``net`` as an ``onnx.ModelProto``.

    Args:
        net: the model, in eval mode.
        input_shape: one sample's shape.
        keep_weights: keep every weight a separate initializer (no Conv + BatchNorm folding), so the
            packed form finds the quantized weights by value.
    """
    onnx = _import("onnx")
    example = torch.zeros(2, *[int(s) for s in input_shape])  # (B, *input_shape); B=2 so no size-1 dim is baked in
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo, which needs onnxscript.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Strided slices (ResNet option-A shortcuts) are exported unfolded: correct, only slower.
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        warnings.filterwarnings("ignore", message="It is recommended that constant folding", category=UserWarning)
        # PRESERVE on an eval model skips the eval-mode peephole pass that folds BatchNorm into Conv weights.
        mode = torch.onnx.TrainingMode.PRESERVE if keep_weights else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=OPSET_VERSION, training=mode,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return onnx.load_from_string(buf.getvalue())


def _packed(proto: Any, f: MbitsFile) -> Any:
    from .onnx_packed import pack_graph

    return pack_graph(proto, f)


def _matmulnbits(proto: Any, f: MbitsFile) -> Any:
    from .onnx_matmulnbits import matmulnbits_graph

    return matmulnbits_graph(proto, f)


def _qonnx(proto: Any, f: MbitsFile) -> Any:
    from .qonnx_export import qonnx_graph

    return qonnx_graph(proto, f)


def _float(proto: Any, f: MbitsFile) -> Any:
    return proto  # the exporter's graph as it is


ONNX_FORMS: Registry[Callable[[Any, MbitsFile], Any]] = Registry("ONNX form")
ONNX_FORMS.register("packed")(_packed)
ONNX_FORMS.register("float")(_float)
ONNX_FORMS.register("qonnx")(_qonnx)
ONNX_FORMS.register("matmulnbits")(_matmulnbits)


def export_onnx(mbits: str | Path | MbitsFile, onnx_path: str | Path, *, model: nn.Module | None = None,
                input_shape: Sequence[int] | None = None, trust_code: bool = False, form: str = "packed",
                normalize: bool = False) -> Path:
    """Write the model of a ``.mbits`` file as ONNX (atomically), with a dynamic batch dimension.

    Args:
        mbits: the ``.mbits`` file (or an already read one).
        onnx_path: the ONNX file to write.
        model: a plain instance of the architecture, when the file has no model recipe.
        input_shape: one sample's shape, e.g. (3, 32, 32); default the manifest's ``input_shape``.
        trust_code: let the file's model recipe import code (see :func:`mixbits.load`).
        form: ``"packed"`` (codes + DequantizeLinear, standard operators), ``"float"`` (dequantized
            float32 weights), ``"matmulnbits"`` (packed, 2/4/8-bit Linear layers as onnxruntime's
            MatMulNBits) or ``"qonnx"`` (float weights through Quant/BipolarQuant, for FINN and hls4ml).
        normalize: put the file's input normalisation into the graph (the input is then scaled to [0, 1]).

    Returns:
        ``onnx_path``.

    Raises:
        ValueError: an unknown form, no input shape known, ``normalize`` without recorded preprocessing,
            a model the packed form cannot hold, or a file that does not load (see :func:`mixbits.load`).
        ImportError: ``onnx`` is not installed.
    """
    onnx = _import("onnx")
    rewrite = ONNX_FORMS.get(form)
    f = mbits if isinstance(mbits, MbitsFile) else read_mbits(mbits)
    shape = input_shape if input_shape is not None else f.manifest.get("input_shape")
    if not shape:
        raise ValueError(f"{f.path!r} records no input shape: pass input_shape, e.g. (3, 32, 32)")
    pre = parse_preprocessing(f.manifest.get("preprocessing"), shape)
    if normalize and pre is None:
        raise ValueError(f"{f.path!r} records no input normalisation: export it without normalize (the graph then "
                         f"expects normalised inputs), or export the .mbits file with preprocessing=")
    net = load(f, model=model, trust_code=trust_code)
    if normalize:
        net = NormalizedModel(net, pre).eval()

    def writer(tmp: str) -> None:
        proto = rewrite(float_graph(net, shape, keep_weights=form != "float"), f)
        props = {"mixbits.format_version": str(FORMAT_VERSION), "mixbits.form": form}
        for rec in f.layers:
            props[f"mixbits.bits.{rec.name}"] = ",".join(str(b) for b in rec.group_bits)
            if rec.grouped:
                props[f"mixbits.group_size.{rec.name}"] = str(rec.group_size)
        if pre is not None:
            props["mixbits.preprocessing"] = pre.dumps()
            props["mixbits.normalized_in_graph"] = "1" if normalize else "0"
        for key, value in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, tmp)

    return atomic_write(onnx_path, writer)


def onnx_preprocessing(onnx_path: str | Path) -> tuple[Preprocessing | None, bool]:
    """(the input normalisation recorded in an exported ONNX file or None, whether the graph applies it)."""
    onnx = _import("onnx")
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    text = props.get("mixbits.preprocessing")
    if text is None:
        return None, False
    import json

    return parse_preprocessing(json.loads(text)), props.get("mixbits.normalized_in_graph") == "1"


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
