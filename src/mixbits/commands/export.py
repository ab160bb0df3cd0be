"""``mixbits export``: a run folder -> a packed ``.mbits`` file (and optionally ONNX), checked."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "export"
HELP = "pack a run's fine-tuned model into a .mbits file at its searched bits (optionally also ONNX)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_folder", metavar="RUN_FOLDER", help="the --out folder of a finished mixbits search")
    p.add_argument("-o", "--output", help="the .mbits file to write (default RUN_FOLDER/model.mbits)")
    p.add_argument("--onnx", nargs="?", const="", default=None, metavar="PATH",
                   help="also write a packed ONNX graph (standard operators: integer codes + DequantizeLinear, about "
                        "the .mbits size; default: the output with .onnx) and check it with onnxruntime")
    p.add_argument("--matmulnbits", action="store_true",
                   help="with --onnx: run the 2-, 4- and 8-bit Linear layers as onnxruntime's MatMulNBits (faster on "
                        "CPU, onnxruntime only)")
    p.add_argument("--onnx-float", nargs="?", const="", default=None, metavar="PATH",
                   help="also write the float ONNX graph (dequantized float32 weights, the float model's size; "
                        "default: the output with .float.onnx) and check it with onnxruntime")
    p.add_argument("--qonnx", nargs="?", const="", default=None, metavar="PATH",
                   help="also write QONNX for FPGA flows (FINN, hls4ml: Quant/BipolarQuant weight nodes; default: "
                        "the output with .qonnx.onnx) and check it with qonnx's executor")
    p.add_argument("--onnx-normalize", action="store_true",
                   help="put the input normalisation into the ONNX graphs (their input is then the image scaled "
                        "to [0, 1]); it is in their metadata either way")
    p.add_argument("--accuracy", action="store_true",
                   help="also evaluate the reloaded model on the run's test set and compare with the run's model")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs of the output checks (default 0)")
    p.add_argument("--trust-model-code", action="store_true",
                   help="let the reload check import the model code the file names (needed for "
                        "torchvision:, timm: and package.module:function models; built-in models never need it)")


def _kib(num_bytes: float) -> str:
    return f"{num_bytes:,.0f} B ({num_bytes / 1024:.2f} KiB)"


def _size_rows(result, report_model_bits: int | None) -> list[tuple[str, str]]:
    from ..export import size_bound_bytes

    rows = []
    if report_model_bits is not None and report_model_bits / 8 != result.promised_bytes:
        rows.append(("warning", f"report.json promised {_kib(report_model_bits / 8)}, the cost model "
                                f"{_kib(result.promised_bytes)}"))
    diff = result.difference_bytes
    allowed = size_bound_bytes(result.promised_bytes)
    return rows + [
        ("promised size (report)", _kib(result.promised_bytes)),
        ("measured file size", _kib(result.file_bytes)),
        ("difference", f"{diff:+,.0f} B ({100 * diff / result.promised_bytes:+.2f}%), of which header "
                       f"{result.header_bytes:,} B; allowed +-{allowed:,.0f} B (2% + 4 KiB): "
                       f"{'ok' if result.within_bound else 'EXCEEDED'}"),
        ("weight compression (file)", f"{result.weight_compression:.2f}x ({result.float_quantized_bytes:,} B "
                                      f"float32 -> {result.quantized_weight_bytes:,} B)"),
        ("whole-file compression", f"{result.file_compression:.2f}x"),
    ]


def _check_trust(args: argparse.Namespace) -> None:
    """Before writing anything: a run of a model that is not built in needs --trust-model-code to reload."""
    from ..export.run_export import CHECKPOINT_NAME
    from ..models import MODELS
    from ..runfiles import load_checkpoint

    ckpt = Path(args.run_folder) / CHECKPOINT_NAME
    name = str(load_checkpoint(ckpt).get("model")) if ckpt.is_file() else None
    if name is not None and name not in MODELS and not args.trust_model_code:
        raise ValueError(f"the run's model {name!r} is not a built-in model: reloading the exported file imports "
                         f"its code. Add --trust-model-code if you trust it")


def _denormalized(batches, pre):
    """The batches undone from their normalisation (what a graph with the normalisation inside takes)."""
    import torch

    for batch in batches:
        x, y = batch if isinstance(batch, (tuple, list)) else (batch, None)
        view = (1, -1) + (1,) * (x.dim() - 2)
        raw = x * torch.tensor(pre.std).view(view) + torch.tensor(pre.mean).view(view)
        yield raw if y is None else (raw, y)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import compare_onnx, export_onnx, export_run, load, run_test_loader
    from ..export.onnx_export import NormalizedModel
    from ..train import evaluate

    if not Path(args.run_folder).is_dir():
        raise FileNotFoundError(f"run folder {args.run_folder!r} does not exist")
    out = Path(args.output) if args.output else Path(args.run_folder) / "model.mbits"
    if out.parent.exists() and not out.parent.is_dir():
        raise ValueError(f"the output folder {str(out.parent)!r} is a file: give -o a path in a folder")
    out.parent.mkdir(parents=True, exist_ok=True)  # a new folder for the file, like --out of a run
    _check_trust(args)
    if args.onnx_normalize and args.onnx is None and args.onnx_float is None and args.qonnx is None:
        raise ValueError("--onnx-normalize changes the ONNX graphs: add --onnx, --onnx-float or --qonnx")
    if args.matmulnbits and args.onnx is None:
        raise ValueError("--matmulnbits changes the --onnx graph: add --onnx")
    result, rm = export_run(args.run_folder, out)
    rows = [("written", str(out))] + _size_rows(result, rm.report_model_bits)

    # Checks: the reloaded file against the fake-quantized model, then ONNX against the reloaded file.
    net = load(out, trust_code=args.trust_model_code)
    batches, what = [], ""
    if rm.input_shape is not None:
        x = torch.randn((8, *rm.input_shape), generator=torch.Generator().manual_seed(args.seed))  # (8, C, H, W)
        with torch.no_grad():
            reload_diff = float((net(x) - rm.model(x)).abs().max())
        rows.append(("reload max |logit diff|", f"{reload_diff:.3g} (vs the fake-quantized model, 8 random inputs)"))
        batches, what = [x], "8 random inputs"
    if args.accuracy:
        loader = run_test_loader(rm.info)
        acc_fq, acc_loaded = evaluate(rm.model, loader), evaluate(net, loader)
        same = "identical" if acc_fq == acc_loaded else "DIFFERENT"
        rows.append(("test accuracy", f"{100 * acc_fq:.2f}% fake-quantized, {100 * acc_loaded:.2f}% reloaded "
                                      f"({same})"))
        batches, what = loader, "whole test set"
    forms = [("matmulnbits" if args.matmulnbits else "packed", args.onnx, ".onnx"),
             ("float", args.onnx_float, ".float.onnx"), ("qonnx", args.qonnx, ".qonnx.onnx")]
    for form, arg, suffix in forms:
        if arg is None:
            continue
        onnx_path = Path(arg) if arg else out.with_suffix(suffix)
        export_onnx(out, onnx_path, trust_code=args.trust_model_code, form=form, normalize=args.onnx_normalize)
        label = {"packed": "onnx", "matmulnbits": "onnx", "float": "float onnx", "qonnx": "qonnx"}[form]
        rows.append((label, f"{onnx_path}: {_kib(onnx_path.stat().st_size)}"))
        if not batches:
            continue
        pre = net.mixbits_preprocessing
        feed = _denormalized(batches, pre) if args.onnx_normalize else batches
        if form == "qonnx":
            from ..export.qonnx_export import execute_qonnx

            x0 = next(iter(feed))
            x0 = x0[0] if isinstance(x0, (tuple, list)) else x0
            with torch.no_grad():
                diff = float(abs(execute_qonnx(str(onnx_path), x0[:8].numpy()) - net(
                    pre.normalize(x0[:8]) if args.onnx_normalize else x0[:8]).numpy()).max())
            rows.append(("qonnx max |output diff|", f"{diff:.3g} (qonnx executor vs PyTorch, 8 inputs)"))
            continue
        cmp = compare_onnx(onnx_path, NormalizedModel(net, pre) if args.onnx_normalize else net, feed)
        rows.append((f"{label} max |output diff|", f"{cmp['max_abs_diff']:.3g} (onnxruntime vs PyTorch, {what})"))
        if cmp["onnx_accuracy"] is not None:
            rows.append((f"{label} test accuracy", f"{100 * cmp['onnx_accuracy']:.2f}% onnxruntime, "
                                                   f"{100 * cmp['torch_accuracy']:.2f}% PyTorch"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0 if result.within_bound else 1
