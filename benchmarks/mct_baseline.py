"""Sony Model Compression Toolkit (MCT 2.6.1) as a post-training mixed-precision baseline.

MCT's post-training quantization searches per-layer weight bitwidths under a
``ResourceUtilization(weights_memory=...)`` target (an integer program over
per-layer sensitivities measured on calibration images). This script runs that
search for the weights only and hands back the bitwidth MCT chose for each
PyTorch module, keyed by the module's fully qualified name, so that mixbits can
size, fine-tune and evaluate the allocation like any other.

It runs in its own venv (``bash benchmarks/mct_setup.sh`` makes ``/work/mct-venv``):
MCT 2.6.1 pins matplotlib/networkx/pydantic and needs a torchvision that only
half-loads beside CPU torch (see :func:`declare_torchvision_ops`).

    /work/mct-venv/bin/python benchmarks/mct_baseline.py --model lenet5 --data mnist5k \\
        --checkpoint float.pt --weight-budget-bytes 20000 --out bits.json
    /work/mct-venv/bin/python benchmarks/mct_baseline.py --model resnet20 --data cifar10 \\
        --data-root ../shared/data/cifar10-jpeg.zip --checkpoint float.pt --target 12x --out bits.json

What MCT is asked for:

- Target platform: MCT's default (IMX500 TPC v1.0, the one ``mct.get_target_platform_capabilities()``
  returns), rebuilt through its own ``get_op_quantization_configs``/``generate_tpc`` with the kernel
  candidates set to ``candidates`` (default 8/4/2, MCT's own list). Kernels: symmetric, per output
  channel, thresholds chosen by MSE. Biases stay float (as in MCT's default).
- Activations: not quantized (float) by default, so the search and MCT's own accuracy measure weight
  quantization only; ``quantize_activations=True`` keeps MCT's 8-bit activations instead. Either way
  only ``weights_memory`` is restricted, so activations never count against the budget.
- Linear and residual collapsing are off, so every MCT kernel node is one PyTorch module's weight;
  BatchNorm folding stays on (MCT names the folded node ``<conv>_bn``; the mapping strips that).

The project's own venv has no MCT: from there, run this file with the MCT venv's python as a
subprocess and read ``--out``'s JSON (``bits`` is keyed like mixbits' layers and is complete).

Cost models, and why :func:`fit_budget` exists:

- MCT's ``weights_memory`` is in bytes: ``sum(numel * bits) / 8`` over the quantized kernels, with no
  per-channel thresholds and without the float biases/BatchNorm.
- mixbits counts a layer at ``b`` integer bits as ``numel * b + 16 * out_channels`` bits (a float16 scale
  per output channel) and 32/16-bit layers as ``numel * b``.
- So for an allocation where MCT quantizes exactly mixbits' layers, mixbits bits = 8 * MCT bytes +
  16 * sum(out_channels). :func:`fit_budget` starts from that translation and bisects MCT's
  ``weights_memory`` until the mixbits-sized cost of MCT's bits is at or under the budget.
- MCT's smallest kernel width is 2 bits (its symmetric signed 1-bit grid is {-t, 0}: no binary
  weights), so in mixbits' terms it reaches at most ~15.5x weight compression (2 bits plus the
  scales): 16x and above are out of its reach.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from _provenance import stamp  # benchmarks/ is on sys.path when run as a script

__all__ = ["declare_torchvision_ops", "import_mct", "mct_tpc", "MCTResult", "run_mct", "mct_bits",
           "mixbits_bits", "FitResult", "fit_budget"]

# Suffixes MCT's graph substitutions append to a node's name (BatchNorm folding and re-folding).
_NODE_SUFFIXES = ("_bn_refused", "_bn")


# ---------------------------------------------------------------------------- torchvision shim
def declare_torchvision_ops() -> None:
    """Declare the torchvision operator schemas that ``import torchvision`` needs when its C++ extension is absent.

    PyPI's torchvision 0.28.0 is a CUDA build; beside CPU torch its ``_C.so`` fails to load
    (libc10_cuda.so missing) and torchvision then skips its meta/autograd registrations, all but
    ``register_fake("torchvision::nms")`` and ``("torchvision::qnms")``, which fail on an undefined
    operator. Declaring those two schemas lets ``import torchvision`` finish; the ops have no kernels
    (calling them raises), which MCT's PyTorch path never does. Idempotent; a no-op where the real
    extension is loaded.
    """
    import torch.library

    for op in ("nms", "qnms"):
        try:
            torch._C._dispatch_find_schema_or_throw(f"torchvision::{op}", "")
            continue  # already there (real extension loaded, or declared before)
        except RuntimeError:
            pass
        torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def import_mct():
    """``import model_compression_toolkit`` after the torchvision shim."""
    if "torchvision" not in sys.modules:
        declare_torchvision_ops()
    import model_compression_toolkit as mct

    return mct


# ---------------------------------------------------------------------------- MCT configuration
def mct_tpc(candidates: Sequence[int] = (2, 4, 8), *, quantize_activations: bool = False):
    """MCT's default target platform (IMX500 TPC v1.0) with kernel candidates ``candidates``.

    With ``quantize_activations=False`` every operator's activation quantization is disabled (float).
    """
    import_mct()
    from model_compression_toolkit.target_platform_capabilities.constants import KERNEL_ATTR, WEIGHTS_N_BITS
    from model_compression_toolkit.target_platform_capabilities.tpc_models.imx500_tpc.v1_0 import tpc as imx500

    cands = sorted({int(b) for b in candidates}, reverse=True)
    if not cands or not all(2 <= b <= 8 for b in cands):
        raise ValueError(f"MCT candidates must be integers in 2..8, got {tuple(candidates)}")
    base, _, default = imx500.get_op_quantization_configs()
    if not quantize_activations:
        base = base.clone_and_edit(enable_activation_quantization=False)
        default = default.clone_and_edit(enable_activation_quantization=False)
    top = base.clone_and_edit(attr_to_edit={KERNEL_ATTR: {WEIGHTS_N_BITS: cands[0]}})
    mp_list = [top.clone_and_edit(attr_to_edit={KERNEL_ATTR: {WEIGHTS_N_BITS: b}},
                                  simd_size=top.simd_size * max(1, cands[0] // b)) for b in cands]
    return imx500.generate_tpc(default_config=default, base_config=top, mixed_precision_cfg_list=mp_list,
                               name="imx500_tpc_mixbits")


def _inputs(batch: Any) -> torch.Tensor:
    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"calibration batches must be tensors or (inputs, labels) pairs, got {type(batch).__name__}")
    return batch.detach().float().cpu()


def _node_to_module(model: nn.Module) -> dict[str, str]:
    """{fx node name: module qualified name} for the module calls in the graph MCT traces."""
    try:
        from model_compression_toolkit.core.pytorch.reader.reader import _trace_model  # MCT's own tracer
        gm = _trace_model(copy.deepcopy(model))
    except ImportError:  # pragma: no cover - private helper moved; plain fx names the nodes the same way
        gm = torch.fx.symbolic_trace(copy.deepcopy(model))
    return {n.name: str(n.target) for n in gm.graph.nodes if n.op == "call_module"}


def _module_of(node: str, names: Mapping[str, str]) -> str | None:
    while node not in names:
        for suffix in _NODE_SUFFIXES:
            if node.endswith(suffix):
                node = node[: -len(suffix)]
                break
        else:
            return None
    return names[node]


@contextlib.contextmanager
def _quiet(enabled: bool) -> Iterator[Path | None]:
    """Send fds 1 and 2 (MCT's logs, tqdm bars, the CBC solver's output) to a temporary file."""
    if not enabled:
        yield None
        return
    sys.stdout.flush()
    sys.stderr.flush()
    fd, path = tempfile.mkstemp(prefix="mct-", suffix=".log")
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield Path(path)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (*saved, fd):
            os.close(f)


# ---------------------------------------------------------------------------- the search
@dataclasses.dataclass
class MCTResult:
    """One MCT post-training mixed-precision run.

    Attributes:
        bits: {module qualified name: weight bits MCT chose}, for every weight MCT quantized.
        weights_memory_target: the ``ResourceUtilization.weights_memory`` MCT was given (bytes).
        weights_memory: MCT's own count of its result (bytes, kernels only, no thresholds).
        nodes: {MCT node name: module qualified name}.
        quantized_model: MCT's exportable fake-quantized model (BN folded, bias-corrected).
        seconds: wall time of the MCT call.
    """

    bits: dict[str, int]
    weights_memory_target: float
    weights_memory: float
    nodes: dict[str, str]
    quantized_model: nn.Module
    seconds: float


def run_mct(model: nn.Module, calib_batches: Iterable[Any], weight_budget_bytes: float,
            candidates: Sequence[int] = (2, 4, 8), *, quantize_activations: bool = False,
            mp_images: int | None = None, verbose: bool = False) -> MCTResult:
    """Run MCT's post-training mixed-precision search on a float model, weights only.

    Args:
        model: the float model (not modified: MCT works on a copy).
        calib_batches: calibration inputs, tensors or (inputs, labels) pairs, already normalised as
            the model expects. All of them feed MCT's statistics; ``mp_images`` of them its sensitivities.
        weight_budget_bytes: MCT's ``weights_memory`` target in bytes (MCT's count: see the module doc).
        candidates: kernel bitwidths MCT may choose (2..8).
        quantize_activations: keep MCT's 8-bit activations (default: float activations).
        mp_images: images for MCT's sensitivity evaluation (default: MCT's default, 32, or fewer if
            fewer were given).
        verbose: show MCT's logs and the CBC solver's output.

    Raises:
        RuntimeError: MCT failed (infeasible budget, untraceable model...), with the end of its log;
            or a quantized MCT node that maps to no module.
    """
    mct = import_mct()
    from model_compression_toolkit.constants import MP_DEFAULT_NUM_SAMPLES
    from model_compression_toolkit.core.pytorch.constants import KERNEL  # "weight"

    batches = [_inputs(b) for b in calib_batches]
    if not batches:
        raise ValueError("no calibration batches")
    num_images = sum(len(b) for b in batches)

    def gen():
        for b in batches:
            yield [b]

    float_model = copy.deepcopy(model).cpu().eval()
    names = _node_to_module(float_model)
    qc = mct.core.QuantizationConfig(linear_collapsing=False, residual_collapsing=False,
                                     shift_negative_activation_correction=quantize_activations)
    mp = mct.core.MixedPrecisionQuantizationConfig(num_of_images=min(num_images, mp_images or MP_DEFAULT_NUM_SAMPLES))
    core_config = mct.core.CoreConfig(quantization_config=qc, mixed_precision_config=mp)
    ru = mct.core.ResourceUtilization(weights_memory=float(weight_budget_bytes))
    tpc = mct_tpc(candidates, quantize_activations=quantize_activations)
    t0 = time.perf_counter()
    with _quiet(not verbose) as log:
        try:
            qmodel, info = mct.ptq.pytorch_post_training_quantization(
                float_model, gen, target_resource_utilization=ru, core_config=core_config,
                target_platform_capabilities=tpc)
            error = None
        except Exception as exc:  # noqa: BLE001 - re-raised below with MCT's log
            error = exc
    seconds = time.perf_counter() - t0
    log_tail = ""
    if log is not None:
        log_tail = log.read_text(errors="replace")[-3000:]
        log.unlink()
    if error is not None:
        raise RuntimeError(f"MCT failed at weights_memory={weight_budget_bytes:g} bytes: "
                           f"{type(error).__name__}: {error}\n--- end of MCT's log ---\n{log_tail}") from error

    bits: dict[str, int] = {}
    nodes: dict[str, str] = {}
    unmapped = []
    for node, module in qmodel.named_modules():
        quantizer = getattr(module, "weights_quantizers", {}).get(KERNEL)
        if quantizer is None:
            continue
        name = _module_of(node, names)
        if name is None:
            unmapped.append(node)
            continue
        b = int(quantizer.num_bits)
        if bits.get(name, b) != b:
            raise RuntimeError(f"MCT gave module {name!r} two bitwidths ({bits[name]} and {b})")
        bits[name], nodes[node] = b, name
    if unmapped:
        raise RuntimeError(f"MCT nodes with quantized weights that match no module: {unmapped}; "
                           f"module calls in the traced graph: {sorted(names)[:40]}")
    final = getattr(info, "final_resource_utilization", None)
    return MCTResult(bits=bits, weights_memory_target=float(weight_budget_bytes),
                     weights_memory=float(final.weights_memory) if final is not None else float("nan"),
                     nodes=nodes, quantized_model=qmodel, seconds=seconds)


def mct_bits(model: nn.Module, calib_batches: Iterable[Any], weight_budget_bytes: float,
             candidates: Sequence[int] = (2, 4, 8), **kwargs: Any) -> dict[str, int]:
    """{module qualified name: weight bits} that MCT chooses under ``weight_budget_bytes`` (MCT's bytes).

    Keyword arguments go to :func:`run_mct`.
    """
    return run_mct(model, calib_batches, weight_budget_bytes, candidates, **kwargs).bits


# ---------------------------------------------------------------------------- mixbits' cost model
def _space(model: nn.Module, candidates: Sequence[int] = ()):
    """A prepared copy of ``model`` and its BitSpace (candidates 1,2,4,8,16,32 plus MCT's)."""
    import mixbits

    m = copy.deepcopy(model).cpu()
    space = mixbits.prepare_(m, mixbits.PrepareConfig(candidates=tuple(sorted({1, 2, 4, 8, 16, 32, *candidates}))))
    return m, space


def mixbits_bits(bits: Mapping[str, int], space) -> tuple[dict[str, int], list[str]]:
    """MCT's {module: bits} as a full mixbits assignment over ``space``'s layers.

    A mixbits layer MCT did not quantize (under any of its names) is kept in float (32 bits);
    those layer names come back as the second element.
    """
    out, float_layers = {}, []
    for layer in space.layers:
        hit = next((bits[n] for n in (layer.name, *layer.aliases) if n in bits), None)
        if hit is None:
            float_layers.append(layer.name)
            hit = 32
        out[layer.name] = int(hit)
    return out, float_layers


@dataclasses.dataclass
class FitResult:
    """MCT's allocation bisected onto a mixbits budget.

    Attributes:
        bits: {mixbits layer name: bits} (every layer; 32 where MCT left a layer in float).
        size_bits: mixbits' exact size of those bits (``space.cost.quantized_bits``), <= budget_bits.
        budget_bits: the budget.
        mct: the MCT run that gave ``bits``.
        float_layers: mixbits layers MCT did not quantize.
        runs: every MCT run tried, [{weights_memory, size_bits, fits, seconds}].
    """

    bits: dict[str, int]
    size_bits: int
    budget_bits: int
    mct: MCTResult
    float_layers: list[str]
    runs: list[dict[str, float]]


def fit_budget(model: nn.Module, calib_batches: Iterable[Any], budget_bits: int,
               candidates: Sequence[int] = (2, 4, 8), *, max_runs: int = 12, **kwargs: Any) -> FitResult:
    """Find MCT's ``weights_memory`` whose allocation, sized by mixbits' cost model, fits ``budget_bits``.

    Starts from the exact translation of the budget (mixbits bits = 8 * MCT bytes + 16 bits per output
    channel when both quantize the same layers), then bisects MCT's target downwards until the
    mixbits size of MCT's bits is at or under ``budget_bits``. Keyword arguments go to :func:`run_mct`.

    Raises:
        ValueError: the budget is below mixbits' size of every layer at the smallest candidate.
        RuntimeError: no MCT target within ``max_runs`` runs fits (the runs are in the message).
    """
    from mixbits.quant import SCALE_BITS

    batches = [_inputs(b) for b in calib_batches]
    _, space = _space(model, candidates)
    cost = space.cost
    lo_c, hi_c = min(candidates), max(candidates)
    floor_bits = cost.quantized_bits({layer.name: lo_c for layer in space.layers})
    if budget_bits < floor_bits:
        raise ValueError(f"budget {budget_bits} bits is below mixbits' size of every layer at {lo_c} bits "
                         f"({floor_bits} bits): MCT cannot reach it with candidates {tuple(candidates)}")
    n = cost.num_quantized_weights
    scales = sum(layer.num_channels * SCALE_BITS for layer in space.layers)  # every MCT candidate is an int width
    w_min, w_max = n * lo_c / 8, n * hi_c / 8
    runs: list[dict[str, float]] = []
    memo: dict[float, tuple[MCTResult, dict[str, int], list[str], int]] = {}

    def attempt(w: float):
        w = float(w)
        if w not in memo:
            r = run_mct(model, batches, w, candidates, **kwargs)
            full, floats = mixbits_bits(r.bits, space)
            size = cost.quantized_bits(full)
            memo[w] = (r, full, floats, size)
            runs.append({"weights_memory": w, "mct_weights_memory": r.weights_memory, "size_bits": size,
                         "fits": size <= budget_bits, "seconds": round(r.seconds, 2)})
        return memo[w]

    def done(entry) -> FitResult:
        r, full, floats, size = entry
        return FitResult(bits=full, size_bits=size, budget_bits=int(budget_bits), mct=r, float_layers=floats,
                         runs=runs)

    guess = min(w_max, math.floor((budget_bits - scales) / 8))
    entry = attempt(guess)
    if entry[3] <= budget_bits:
        return done(entry)
    lo, hi = w_min, guess
    best = attempt(lo)
    if best[3] > budget_bits:
        raise RuntimeError(f"MCT's smallest allocation does not fit {budget_bits} bits: {runs}")
    while len(runs) < max_runs and hi - lo > max(1.0, 1e-3 * hi):
        mid = math.floor((lo + hi) / 2)
        if mid <= lo:
            break
        entry = attempt(mid)
        if entry[3] <= budget_bits:
            lo, best = mid, entry
        else:
            hi = mid
    return done(best)


# ---------------------------------------------------------------------------- CLI
def _evaluate(model: nn.Module, loader) -> float:
    device = next(model.parameters()).device
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x.to(device))
            correct += int((out.argmax(1).cpu() == y).sum())
            seen += len(y)
    return correct / seen


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a mixbits zoo name, e.g. lenet5, resnet20")
    p.add_argument("--data", required=True, help="a mixbits data set, e.g. mnist5k, cifar10")
    p.add_argument("--data-root", default=None, help="e.g. ../shared/data/cifar10-jpeg.zip for cifar10")
    p.add_argument("--checkpoint", default=None, help="float checkpoint (a run's float.pt or a state_dict)")
    p.add_argument("--train-epochs", type=int, default=0,
                   help="without --checkpoint: train the float model this many epochs first (0: random weights)")
    p.add_argument("--train-lr", type=float, default=0.05)
    p.add_argument("--train-subset", type=int, default=None, help="--train-epochs on a seeded subset of N images")
    p.add_argument("--save-checkpoint", default=None, help="save the float model trained by --train-epochs here")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--weight-budget-bytes", type=float, help="MCT's own weights_memory target (bytes)")
    budget.add_argument("--budget-bits", type=int, help="a mixbits budget in bits (bisects MCT's target)")
    budget.add_argument("--target", help="a mixbits target, e.g. 16x, 300KB, 2.5bits (bisects MCT's target)")
    p.add_argument("--candidates", default="2,4,8", help="MCT's kernel bitwidths (2..8)")
    p.add_argument("--calib-images", type=int, default=256, help="calibration images from the training split")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--mp-images", type=int, default=None, help="images for MCT's sensitivities (default 32)")
    p.add_argument("--quantize-activations", action="store_true", help="MCT's 8-bit activations (default float)")
    p.add_argument("--eval", action="store_true", help="test accuracy: float, MCT's model, mixbits PTQ of the bits")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on a seeded random N test images")
    p.add_argument("--max-runs", type=int, default=12, help="MCT runs at most when bisecting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--verbose", action="store_true", help="show MCT's logs")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p.parse_args(argv)


def _float_model(args: argparse.Namespace, ds) -> tuple[nn.Module, str]:
    """The float model to allocate for: the checkpoint, trained here (``--train-epochs``), or random; its source."""
    import mixbits
    from mixbits.data import TensorLoader, take_train_subset
    from mixbits.models import create_model
    from mixbits.pipeline import load_float_state

    c, h = ds.input_shape[0], ds.input_shape[-1]
    model = create_model(args.model, in_channels=c, num_classes=ds.num_classes, input_size=h)
    source = "random"
    if args.checkpoint:
        load_float_state(model, args.checkpoint)
        source = args.checkpoint
    elif args.train_epochs > 0:
        tds = take_train_subset(ds, args.train_subset, seed=args.seed) if args.train_subset else ds
        loader = TensorLoader(tds.train_x, tds.train_y, batch_size=128, shuffle=True, augment=ds.augment,
                              drop_last=True, seed=args.seed, mean=ds.mean, std=ds.std)
        t = time.perf_counter()
        mixbits.fit(model, loader, mixbits.TrainConfig(epochs=args.train_epochs, lr=args.train_lr))
        source = f"trained here: {args.train_epochs} epochs, {time.perf_counter() - t:.1f} s"
        if args.save_checkpoint:
            from mixbits.runfiles import save_checkpoint
            save_checkpoint(args.save_checkpoint, {"model": args.model, "data": args.data,
                                                   "state_dict": model.state_dict()})
    else:
        print("warning: no --checkpoint and --train-epochs 0: random float weights", file=sys.stderr)
    return model.eval(), source


def _allocate(args: argparse.Namespace, model: nn.Module, calib: list, candidates: tuple[int, ...], cost
              ) -> tuple[Any, dict[str, int], list[str], list[dict], int | None, float]:
    """MCT's allocation at its own memory target, or bisected onto a mixbits budget:
    (MCT's last result, the mixbits bits, layers MCT kept float, the runs, the budget, seconds)."""
    import mixbits

    run_kw = dict(quantize_activations=args.quantize_activations, mp_images=args.mp_images, verbose=args.verbose)
    t = time.perf_counter()
    if args.weight_budget_bytes is not None:
        result = run_mct(model, calib, args.weight_budget_bytes, candidates, **run_kw)
        _, space = _space(model, candidates)
        bits, float_layers = mixbits_bits(result.bits, space)
        return result, bits, float_layers, [], None, time.perf_counter() - t
    budget = args.budget_bits if args.budget_bits is not None else mixbits.budget_bits(args.target, cost)
    fit = fit_budget(model, calib, budget, candidates, max_runs=args.max_runs, **run_kw)
    return fit.mct, fit.bits, fit.float_layers, fit.runs, budget, time.perf_counter() - t


def _accuracies(args: argparse.Namespace, ds, model: nn.Module, mct_model: nn.Module, bits: Mapping[str, int],
                candidates: tuple[int, ...]) -> dict[str, Any]:
    """Test accuracy of the float model, MCT's quantized model and mixbits' PTQ of the same bits."""
    from mixbits.data import TensorLoader

    tx, ty = ds.test_x, ds.test_y
    if args.test_subset and args.test_subset < len(ty):  # seeded: the test split may be sorted by class
        idx = torch.randperm(len(ty), generator=torch.Generator().manual_seed(args.seed))[: args.test_subset]
        tx, ty = tx[idx], ty[idx]
    test = TensorLoader(tx, ty, batch_size=256, mean=ds.mean, std=ds.std)
    qmodel, qspace = _space(model, candidates)
    qspace.fix_(bits)
    return {"float": _evaluate(model, test), "mct_model": _evaluate(mct_model, test),
            "mixbits_ptq": _evaluate(qmodel, test), "test_images": len(ty)}


def _print_summary(report: Mapping[str, Any], space, result) -> None:
    bits, budget, size = report["bits"], report["budget_bits"], report["mixbits_size_bits"]
    width = max(len(n) for n in bits)
    for layer in space.layers:
        print(f"  {layer.name:<{width}}  {bits[layer.name]:>2} bits  {layer.num_weights:>8} weights")
    print(f"mixbits size: {size} bits = {size / 8:.0f} bytes ({report['weight_compression']:.2f}x, "
          f"{report['average_bits']:.3f} bits/weight)" + (f"; budget {budget} bits" if budget is not None else ""))
    print(f"MCT weights_memory: target {result.weights_memory_target:.0f} B, result {result.weights_memory:.0f} B; "
          f"MCT runs: {max(1, len(report['runs']))}, search {report['search_seconds']:.1f} s, "
          f"total {report['total_seconds']:.1f} s")
    if "accuracy" in report:
        a = report["accuracy"]
        print(f"test accuracy ({a['test_images']} images): float {a['float']:.4f}, MCT model {a['mct_model']:.4f}, "
              f"mixbits PTQ of these bits {a['mixbits_ptq']:.4f}")
    if report["float_layers"]:
        print(f"kept in float (MCT did not quantize them): {report['float_layers']}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    import mixbits
    from mixbits.data import TensorLoader, load_dataset, take_train_subset

    mct = import_mct()
    t_start = time.perf_counter()
    candidates = tuple(int(b) for b in args.candidates.split(","))
    ds = load_dataset(args.data, root=args.data_root)
    model, float_source = _float_model(args, ds)
    calib_ds = take_train_subset(ds, min(args.calib_images, len(ds.train_y)), seed=args.seed)
    calib = [x for x, _ in TensorLoader(calib_ds.train_x, calib_ds.train_y, batch_size=args.batch_size,
                                        mean=ds.mean, std=ds.std)]
    _, space = _space(model, candidates)
    cost = space.cost
    result, bits, float_layers, runs, budget, search_s = _allocate(args, model, calib, candidates, cost)
    size = cost.quantized_bits(bits)
    report: dict[str, Any] = {
        "model": args.model, "data": args.data, "float": float_source, "candidates": list(candidates),
        "calib_images": sum(len(x) for x in calib), "activations": "8-bit" if args.quantize_activations else "float",
        "mct_weights_memory_target_bytes": result.weights_memory_target,
        "mct_weights_memory_bytes": result.weights_memory,
        "budget_bits": budget, "mixbits_size_bits": size, "mixbits_size_bytes": size / 8,
        "weight_compression": cost.weight_compression(bits), "average_bits": cost.average_bits(bits),
        "bits": bits, "mct_bits": result.bits, "mct_nodes": result.nodes, "float_layers": float_layers,
        "runs": runs, "mct_seconds_last_run": round(result.seconds, 2), "search_seconds": round(search_s, 2),
        "versions": {"torch": torch.__version__, "mct": mct.__version__, "mixbits": mixbits.__version__},
        **stamp(),
    }
    if args.eval:
        report["accuracy"] = _accuracies(args, ds, model, result.quantized_model, bits, candidates)
    report["total_seconds"] = round(time.perf_counter() - t_start, 2)
    _print_summary(report, space, result)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
