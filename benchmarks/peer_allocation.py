"""Post-training mixed-precision peers on allocation_quality's models: each peer's bits, and its own accuracy.

Runs INSIDE a peer's own venv (never the project's): Sony MCT's mixed precision
(``bash benchmarks/mct_setup.sh``, /work/mct-venv, MCT 2.6.1), NNCF's HAWQ precision initialisation
(``bash benchmarks/nncf_setup.sh``, /work/nncf-venv, NNCF 2.19.0: the last release with the
legacy PyTorch API; 3.0.0 removed ``create_compressed_model`` and its mixed-precision
initialisers) or Qualcomm AIMET's AMP (``bash benchmarks/aimet_setup.sh``, /work/aimet-venv,
aimet-torch 2.42.0). For each (seed, target) it

1. builds the row exactly as ``allocation_quality.py`` does (``start_row``: the committed float
   checkpoint, the held-out part of the training split shuffled by the seed) and mixbits'
   budget of the target (``check_targets``: scales counted, 16 bits per output channel);
2. gives the peer the first ``--calib-images`` images of that held-out split (the images the
   mixbits methods read for their sensitivities and held-out losses) as calibration data;
3. searches the peer's own budget knob (MCT: ``weights_memory`` in bytes; HAWQ:
   ``compression_ratio``, a FLOPs-weighted bit complexity against all-int8) for the largest
   allocation whose size COUNTED BY MIXBITS fits the budget: the peer's count differs from
   mixbits' (no scales in MCT's bytes; FLOPs x bits in HAWQ's ratio; AMP stops at an accuracy
   drop, not a size), so the peer's own target is translated and searched, never taken at face value;
4. records the peer's per-layer bits (mixbits layer names; the peers' candidates 2/4/8 are all
   mixbits candidates, so no bitwidth is remapped) and the test accuracy of the peer's OWN
   quantized model (its quantizer, its thresholds, activations left float).

A target below the peer's smallest allocation (every layer at 2 bits, plus mixbits' scales) is
recorded as unreachable, with the reason. The JSON is read by ``allocation_quality.py
--peer-bits`` in the project venv, which evaluates the bits with mixbits' own quantizer and
protocol (``_post_accuracy``) and appends the rows.

    OMP_NUM_THREADS=1 PYTHONPATH=src /work/mct-venv/bin/python benchmarks/peer_allocation.py --peer mct \\
        --model lenet5 --data mnist5k --checkpoint benchmarks/checkpoints/lenet5_mnist5k_e60.pt \\
        --targets 8x 16x 24x 28x --seeds 0 1 2 --out benchmarks/results/peer_bits/mct_lenet5.json
    OMP_NUM_THREADS=1 PYTHONPATH=src /work/nncf-venv/bin/python benchmarks/peer_allocation.py --peer nncf_hawq \\
        --model lenet5 ... --out benchmarks/results/peer_bits/nncf_hawq_lenet5.json
    OMP_NUM_THREADS=1 PYTHONPATH=src /work/aimet-venv/bin/python benchmarks/peer_allocation.py --peer aimet_amp \\
        --model lenet5 ... --out benchmarks/results/peer_bits/aimet_amp_lenet5.json
    OMP_NUM_THREADS=1 PYTHONPATH=src .venv/bin/python benchmarks/allocation_quality.py \\
        --peer-bits benchmarks/results/peer_bits/mct_lenet5.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import command_line, describe, stamp  # noqa: E402

from mixbits.pipeline import Settings  # noqa: E402
from mixbits.pipeline.allocation import prepare_config, start_row  # noqa: E402
from mixbits.pipeline.data import build_data  # noqa: E402
from mixbits.pipeline.float_model import check_targets, load_float_state, new_model  # noqa: E402
from mixbits.train import evaluate  # noqa: E402

log = logging.getLogger("peer_allocation")


class Unreachable(Exception):
    """The target is below the peer's smallest allocation."""


def calibration_batches(row, images: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``images`` images of the row's held-out loader (normalised, the seed's order)."""
    out, seen = [], 0
    for x, y in row.loaders["held_out"]:
        out.append((x.detach().cpu(), y.detach().cpu()))
        seen += len(y)
        if seen >= images:
            break
    return out


def own_accuracy(model: torch.nn.Module, test) -> float:
    model.eval()
    with torch.no_grad():
        return evaluate(model, test, device=torch.device("cpu"))


def check_reachable(row, budget: int, smallest: int) -> None:
    """Raise :class:`Unreachable` when every layer at the peer's ``smallest`` bitwidth, counted by mixbits, is
    over ``budget``."""
    floor = row.space.cost.quantized_bits({layer.name: smallest for layer in row.space.layers})
    if floor > budget:
        raise Unreachable(f"every layer at the peer's smallest width, {smallest} bits, is {floor} bits with mixbits' "
                          f"scales, over the budget of {budget} bits")


# ---------------------------------------------------------------------------- MCT
def run_mct_peer(row, fresh: Callable[[], torch.nn.Module], calib, budget: int, test, args) -> dict[str, Any]:
    """MCT's post-training mixed precision (weights only, float activations), bisected onto the budget.

    Args:
        row: allocation_quality's row (its BitSpace counts sizes; its model is prepared, so not handed over).
        fresh: a new unprepared float model with the checkpoint's weights.
        calib: calibration (inputs, labels) batches.
        budget: mixbits' budget in bits.
        test: the test loader.
        args: the command line.
    """
    import mct_baseline

    mct = mct_baseline.import_mct()
    cands = (2, 4, 8)
    check_reachable(row, budget, min(cands))
    fit = mct_baseline.fit_budget(fresh(), calib, budget, cands, max_runs=args.max_runs)
    return {"bits": fit.bits, "own_accuracy": own_accuracy(fit.mct.quantized_model, test),
            "knob": {"weights_memory_bytes": fit.mct.weights_memory_target,
                     "mct_weights_memory_bytes": fit.mct.weights_memory},
            "runs": fit.runs, "float_layers": fit.float_layers, "peer_candidates": list(cands),
            "version": f"model-compression-toolkit {mct.__version__}"}


# ---------------------------------------------------------------------------- NNCF HAWQ
def _module_name(nncf_node: str) -> str:
    """NNCF's node name ("LeNet5/Sequential[features]/NNCFConv2d[0]/conv2d_0") -> the module's ("features.0")."""
    return ".".join(re.findall(r"\[([^\]]+)\]", nncf_node))


def run_hawq_peer(row, fresh: Callable[[], torch.nn.Module], calib, budget: int, test, args) -> dict[str, Any]:
    """NNCF's HAWQ precision initialisation (legacy ``create_compressed_model``), no training.

    NNCF's knobs are its defaults (Hutchinson trace estimation: 200 iterations at most, tolerance
    1e-4; ``num_data_points`` the calibration images), bits 2/4/8, symmetric per-channel weights,
    ``target_device`` TRIAL (any bitwidth allowed), liberal bitwidth assignment. The Hessian traces are
    computed once per (seed, target) and reused (they do not depend on ``compression_ratio``). The ratio
    taken is the smallest at which NNCF's own choice fits mixbits' budget, found from NNCF's table of
    candidate sequences (see below), then asked of NNCF and checked. HAWQ's sensitivity needs NNCF's activation quantizers in the graph (its ratio counts
    ``max(weight bits, activation bits) x FLOPs``); the own accuracy is measured with them disabled (float
    activations), like MCT's. Arguments as :func:`run_mct_peer`.
    """
    os.environ["NNCF_TORCH_LEGACY_TRACING"] = "1"  # NNCF 2.19: create_compressed_model needs the legacy tracing
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # its C++ kernels compile on first use (minutes)
    import nncf
    from nncf import NNCFConfig
    from nncf.torch import create_compressed_model, register_default_init_args
    from nncf.torch.quantization.precision_init.hawq_init import HAWQPrecisionInitializer

    cands = (2, 4, 8)
    check_reachable(row, budget, min(cands))
    x = torch.cat([b for b, _ in calib])
    y = torch.cat([b for _, b in calib])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=row.loaders["held_out"]
                                         .batch_size, shuffle=False)
    traces: dict[str, Any] = {}
    original = HAWQPrecisionInitializer._calc_traces

    def cached(self, *a, **k):
        if "t" not in traces:
            torch.manual_seed(row.seed)  # Hutchinson's random vectors follow the seed
            traces["t"] = original(self, *a, **k)
        return traces["t"]

    runs: list[dict[str, Any]] = []

    def compress(ratio: float):
        config = NNCFConfig.from_dict({
            "input_info": {"sample_size": [1, *x.shape[1:]]}, "target_device": "TRIAL",
            "compression": {"algorithm": "quantization",
                            "weights": {"mode": "symmetric", "per_channel": True},
                            "activations": {"mode": "symmetric"},
                            "initializer": {"range": {"num_init_samples": len(y)},
                                            "batchnorm_adaptation": {"num_bn_adaptation_samples": 0},
                                            "precision": {"type": "hawq", "bits": list(cands),
                                                          "compression_ratio": ratio,
                                                          "num_data_points": len(y)}}}})
        config = register_default_init_args(config, loader, criterion=torch.nn.CrossEntropyLoss(),
                                            device="cpu")
        ctrl, qmodel = create_compressed_model(fresh(), config, dump_graphs=False)
        bits = {}
        for wq_id, info in ctrl.weight_quantizers.items():
            bits[_module_name(wq_id.target_node_name)] = int(info.quantizer_module_ref.num_bits)
        full, float_layers = mixbits_bits(bits, row.space)
        size = row.space.cost.quantized_bits(full)
        runs.append({"compression_ratio": ratio, "size_bits": size, "fits": size <= budget, "bits": full})
        return ctrl, qmodel, full, float_layers, size

    # NNCF's choice at a ratio r: among its candidate sequences with ratio >= r, the one of least HAWQ metric.
    # The first run records every sequence (its bits, ratio, metric) and returns NNCF's choice at the smallest r
    # whose choice fits mixbits' budget; the second run asks NNCF for exactly that r, unpatched but for the
    # cached traces, and must give the same bits.
    seqs: list[dict[str, int]] = []
    seen: dict[str, Any] = {}
    original_ratios = HAWQPrecisionInitializer.get_compression_ratio_per_qconfig_sequence
    original_choose = HAWQPrecisionInitializer.choose_qconfig_sequence  # the plain function
    choose_descriptor = HAWQPrecisionInitializer.__dict__["choose_qconfig_sequence"]  # its staticmethod

    def ratios(self, qconfig_sequences, traces_order):
        order = list(self._weight_quantizations_by_execution_order)
        for seq in qconfig_sequences:
            cfgs = traces_order.get_execution_order_configs(seq)
            seqs.append({_module_name(wq.target_node_name): int(c.num_bits) for wq, c in zip(order, cfgs)})
        return original_ratios(self, qconfig_sequences, traces_order)

    def choose(metrics, ratio_list, _ratio):
        metric = [float(m) for m in metrics]
        for r in sorted(set(ratio_list)):
            index = original_choose(metrics, ratio_list, r)
            full, _ = mixbits_bits(seqs[index], row.space)
            if row.space.cost.quantized_bits(full) <= budget:
                seen.update(ratio=r, index=index)
                break
        seen["table"] = [{"bits": b, "ratio": float(q), "metric": m} for b, q, m in zip(seqs, ratio_list, metric)]
        return seen.get("index", original_choose(metrics, ratio_list, max(ratio_list)))

    HAWQPrecisionInitializer._calc_traces = cached
    try:
        HAWQPrecisionInitializer.get_compression_ratio_per_qconfig_sequence = ratios
        HAWQPrecisionInitializer.choose_qconfig_sequence = staticmethod(choose)
        try:
            compress(1.0)
        finally:
            HAWQPrecisionInitializer.get_compression_ratio_per_qconfig_sequence = original_ratios
            HAWQPrecisionInitializer.choose_qconfig_sequence = choose_descriptor
        if "ratio" not in seen:
            raise RuntimeError(f"no HAWQ sequence fits {budget} bits: {seen.get('table')}")
        best = compress(seen["ratio"])
    finally:
        HAWQPrecisionInitializer._calc_traces = original
    expected, _ = mixbits_bits(seqs[seen["index"]], row.space)
    if best[2] != expected:
        raise RuntimeError(f"NNCF at compression_ratio={seen['ratio']} chose {best[2]}, not {expected}")
    ctrl, qmodel, full, float_layers, _ = best
    for info in ctrl.non_weight_quantizers.values():
        info.quantizer_module_ref.disable_quantization()
    return {"bits": full, "own_accuracy": own_accuracy(qmodel, test),
            "knob": {"compression_ratio": seen["ratio"]}, "runs": runs, "hawq_sequences": seen["table"], "float_layers": float_layers, "peer_candidates": list(cands),
            "version": f"nncf {nncf.__version__}"}


# ---------------------------------------------------------------------------- AIMET AMP
def run_amp_peer(row, fresh: Callable[[], torch.nn.Module], calib, budget: int, test, args) -> dict[str, Any]:
    """AIMET's AMP (``aimet_torch.mixed_precision.choose_mixed_precision``), weights 8/4/2, activations float.

    A ``QuantizationSimModel`` with AIMET's per-channel default config (symmetric weights, biases
    float), its activation quantizers removed (float activations). AMP's phase 1 measures each
    quantizer group's accuracy (the calibration images) at every candidate and sorts the
    (group, candidate) moves; phase 2 walks that list cumulatively and stops at an ACCURACY drop
    (``allowed_accuracy_drop``), not a size. Here AMP runs with ``allowed_accuracy_drop=None`` (its full
    curve), and the allocation taken is the first point on AMP's own path whose mixbits-counted size fits
    the budget (the largest one on the path within budget). Arguments as :func:`run_mct_peer`.
    """
    import mct_baseline

    mct_baseline.declare_torchvision_ops()  # aimet-torch imports the CUDA torchvision wheel too
    import aimet_torch
    from aimet_common.defs import QuantizationDataType, QuantScheme
    from aimet_torch.common.defs import CallbackFunc
    from aimet_torch.amp.utils import _mock_v1_quantizers
    from aimet_torch.mixed_precision import choose_mixed_precision
    from aimet_torch.quantsim import QuantizationSimModel

    cands = (2, 4, 8)
    check_reachable(row, budget, min(cands))
    model = fresh()
    dummy = calib[0][0][:1]
    config = Path(aimet_torch.__file__).parent / "common" / "quantsim_config" / "default_config_per_channel.json"
    sim = QuantizationSimModel(model, dummy, quant_scheme=QuantScheme.post_training_tf_enhanced, default_param_bw=8,
                               default_output_bw=16, config_file=str(config))
    for module in sim.model.modules():  # float activations: no input/output quantizers
        for attr in ("input_quantizers", "output_quantizers"):
            qs = getattr(module, attr, None)
            if qs is not None:
                for i in range(len(qs)):
                    qs[i] = None

    def forward(m, _=None):
        with torch.no_grad():
            for x, _y in calib:
                m(x)

    def calib_accuracy(m, _=None) -> float:
        m.eval()
        with torch.no_grad():
            hits = sum(int((m(x).argmax(1) == y).sum()) for x, y in calib)
        return hits / sum(len(y) for _, y in calib)

    sim.compute_encodings(forward, None)
    candidates = [((16, QuantizationDataType.int), (b, QuantizationDataType.int)) for b in sorted(cands, reverse=True)]
    with tempfile.TemporaryDirectory(prefix="amp-") as results:
        choose_mixed_precision(sim, dummy, candidates, CallbackFunc(calib_accuracy), CallbackFunc(calib_accuracy),
                               None, results, True, CallbackFunc(forward))
        with open(Path(results) / ".cache" / "accuracy_list.pkl", "rb") as f:
            path = pickle.load(f)  # AMP's own phase-1 list, written by the call above
    names = {n: m for n, m in sim.model.named_modules()}
    bits = {g: 8 for entry in path for g in entry[0].parameter_quantizers}
    chosen, step = None, -1
    trail = []
    for i, (group, candidate, score, _) in enumerate(path):
        for g in group.parameter_quantizers:
            bits[g] = int(candidate[1][0])
        full, float_layers = mixbits_bits(bits, row.space)
        size = row.space.cost.quantized_bits(full)
        trail.append({"step": i, "group": list(group.parameter_quantizers), "weight_bits": int(candidate[1][0]),
                      "phase1_accuracy": float(score), "size_bits": size})
        if size <= budget:
            chosen, step = (dict(bits), full, float_layers), i
            break
    if chosen is None:
        raise RuntimeError(f"no point on AMP's path fits {budget} bits: {trail}")
    with _mock_v1_quantizers(sim):  # AMP's own way of setting a group's bitwidth, then its encodings again
        for group, _, _, _ in path:  # AMP leaves its last point set: back to the 8-bit start first
            group.set_quantizers_to_candidate(names, candidates[0])
        for group, candidate, _, _ in path[: step + 1]:
            group.set_quantizers_to_candidate(names, candidate)
    sim.compute_encodings(forward, None)
    amp_bits, full, float_layers = chosen
    set_bits = {n: int(m.param_quantizers["weight"].bitwidth) for n, m in names.items()
                if getattr(m, "param_quantizers", None) and m.param_quantizers["weight"] is not None}
    if set_bits != amp_bits:
        raise RuntimeError(f"AIMET's sim holds {set_bits}, not the chosen {amp_bits}")
    return {"bits": full, "own_accuracy": own_accuracy(sim.model, test), "knob": {"amp_path_step": step},
            "runs": trail, "float_layers": float_layers, "peer_candidates": list(cands),
            "version": f"aimet-torch {aimet_torch.__version__}"}


def mixbits_bits(bits: dict[str, int], space) -> tuple[dict[str, int], list[str]]:
    """A peer's {module: bits} as a full mixbits assignment (32 where the peer left a layer float)."""
    out, float_layers = {}, []
    for layer in space.layers:
        hit = next((bits[n] for n in (layer.name, *layer.aliases) if n in bits), None)
        if hit is None:
            float_layers.append(layer.name)
        out[layer.name] = 32 if hit is None else int(hit)
    return out, float_layers


PEERS: dict[str, Callable[..., dict[str, Any]]] = {"mct": run_mct_peer, "nncf_hawq": run_hawq_peer,
                                                    "aimet_amp": run_amp_peer}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer", required=True, choices=sorted(PEERS))
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--data-root")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--train-subset", type=int)
    p.add_argument("--targets", nargs="+", default=["8x", "16x", "24x", "28x"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--calib-images", type=int, default=1024, help="held-out training images the peer reads")
    p.add_argument("--max-runs", type=int, default=12, help="peer runs at most when bisecting its budget knob")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    torch.set_num_threads(1)
    out = Path(args.out).resolve()
    checkpoint = str(Path(args.checkpoint).resolve())
    data_root = str(Path(args.data_root).resolve()) if args.data_root else None
    command = command_line()
    os.chdir(tempfile.mkdtemp(prefix="peer-"))  # the peers write debug files (graphs, bitwidths) to the cwd
    settings = Settings(data=args.data, data_root=data_root, model=args.model, checkpoint=checkpoint,
                        train_subset=args.train_subset, device="cpu")
    data = build_data(args.data, root=data_root, train_subset=args.train_subset, device=torch.device("cpu"))
    model = new_model(args.model, data)
    load_float_state(model, checkpoint)
    float_state = {k: v.clone() for k, v in model.state_dict().items()}
    budgets = dict(zip(args.targets, check_targets(model, prepare_config(settings), args.targets)))
    result: dict[str, Any] = {"peer": args.peer, "model": args.model, "data": args.data, "data_root": args.data_root,
                              "checkpoint": args.checkpoint, "train_subset": args.train_subset,
                              "calib_images": args.calib_images, "command": command, "machine": describe(),
                              **stamp(), "rows": []}
    for seed in args.seeds:
        for target in args.targets:
            row = start_row(settings, data, float_state, seed)
            calib = calibration_batches(row, args.calib_images)
            entry: dict[str, Any] = {"seed": seed, "target": target, "budget_bits": budgets[target],
                                     "calib_images": sum(len(y) for _, y in calib)}
            t0 = time.perf_counter()
            try:
                entry.update(PEERS[args.peer](row, lambda: new_model(args.model, data, float_state).eval(), calib,
                                              budgets[target], row.loaders["test"], args))
                entry["size_bits"] = row.space.cost.quantized_bits(entry["bits"])
                entry["fits"] = entry["size_bits"] <= budgets[target]
                log.info("%s %s %s seed %d: %s, %d/%d bits, own accuracy %.4f", args.peer, args.model, target, seed,
                         entry["bits"], entry["size_bits"], budgets[target], entry["own_accuracy"])
            except Unreachable as exc:
                entry["unreachable"] = str(exc)
                log.info("%s %s %s seed %d: unreachable (%s)", args.peer, args.model, target, seed, exc)
            entry["seconds"] = round(time.perf_counter() - t0, 2)
            result["rows"].append(entry)
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=1))
            tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
