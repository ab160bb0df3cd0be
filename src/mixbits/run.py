"""The whole job behind ``mixbits search``: data -> float model -> search -> fine-tune -> report.

:func:`run_search` validates everything (data set, model, pins, target) before
any training, then runs the stages through the same public functions a Python
user calls, and writes the run folder:

- ``settings.json``  the resolved settings;
- ``float.pt``       the float checkpoint (when trained here);
- ``bits.json``      {layer name: bits};
- ``search.json``    the method's per-epoch history (expected size, multiplier, probabilities);
- ``report.json`` / ``report.md``  per-layer table, totals, accuracies;
- ``finetuned.pt``   the fine-tuned weights with their bits;
- ``history.json``   per-epoch loss and accuracy of the float training and the fine-tuning;
- ``resume.pt``      the checkpoint of the last finished epoch (``mixbits search --resume``);
- ``run.log``        the log (written by the command line).

Under ``torchrun`` every process runs :func:`run_search` on its slice of each batch
(see :mod:`mixbits.distributed`); rank 0 alone writes the folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from . import distributed
from .budget import budget_bits, parse_target
from .data import TensorLoader, load_dataset, split_held_out, take_train_subset
from .finetune import finetune_
from .models import create_model
from .export.exporter import export_model
from .report import build_report, to_markdown
from .runfiles import RunLock, claim_run_dir, load_checkpoint, save_checkpoint, write_json, write_text
from .methods import METHODS, AllocationContext, allocate
from .space import DEFAULT_CANDIDATES, PrepareConfig, prepare_
from .train import NonFiniteLossError, TrainConfig, evaluate, fit, recalibrate_bn_, load_loader_state, loader_state, rng_state, set_rng_state

__all__ = ["RunConfig", "run_search", "resume_run", "load_settings", "resolve_device", "load_float_state", "RESUME_FILE"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Every setting of a ``mixbits search`` run (the CLI options)."""

    data: str = "digits"
    data_root: str | None = None
    model: str = "digits_cnn"
    method: str = "hessian"
    method_options: Mapping[str, Any] = field(default_factory=dict)
    target: str = "24x"
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    pins: Mapping[str, int] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    float_epochs: int = 30
    search_epochs: int = 10
    finetune_epochs: int = 10
    batch_size: int = 64
    float_lr: float = 0.05
    finetune_lr: float = 0.01
    held_out_fraction: float = 0.2
    distill: bool = True
    seed: int = 0
    device: str = "auto"
    out: str | None = None
    checkpoint: str | None = None
    train_subset: int | None = None

    def __post_init__(self) -> None:
        parse_target(self.target)
        for name in ("float_epochs", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.search_epochs < 2:
            raise ValueError(f"search_epochs must be >= 2 (one warm-up epoch, then the search), got {self.search_epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; anything else is checked.

    Raises:
        ValueError: an unknown or unavailable device.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available here; use --device cpu or auto")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device {name!r} asked for but MPS is not available here; use --device cpu or auto")
    return dev


def load_float_state(model: torch.nn.Module, path: str | Path) -> dict:
    """Load a float checkpoint (``float.pt`` of a run, or a plain state_dict) into ``model``.

    Raises:
        FileNotFoundError, ValueError: missing file, or weights that do not fit the model.
    """
    obj = load_checkpoint(path)
    state = obj.get("state_dict", obj)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise ValueError(f"checkpoint {str(path)!r} does not fit the model: {' '.join(first)}") from None
    return obj


def _loaders(ds, config: RunConfig, device: torch.device) -> dict[str, TensorLoader]:
    if config.train_subset is not None:  # seed 0 whatever the run's seed: the subset `mixbits train` used
        ds = take_train_subset(ds, config.train_subset)
    w_idx, h_idx = split_held_out(len(ds.train_y), config.held_out_fraction, config.seed)
    common = dict(batch_size=config.batch_size, mean=ds.mean, std=ds.std, device=device)
    aug = ds.augment
    return {
        "full": TensorLoader(ds.train_x, ds.train_y, shuffle=True, augment=aug, seed=config.seed, drop_last=True, **common),
        "weights": TensorLoader(ds.train_x[w_idx], ds.train_y[w_idx], shuffle=True, augment=aug, seed=config.seed + 1,
                                drop_last=True, **common),
        "held_out": TensorLoader(ds.train_x[h_idx], ds.train_y[h_idx], shuffle=True, augment=aug, seed=config.seed + 2,
                                 drop_last=True, **common),
        "test": TensorLoader(ds.test_x, ds.test_y, shuffle=False, **{**common, "batch_size": 512}),
    }


RESUME_FILE = "resume.pt"
# What a run writes (--force removes them first, so a folder never mixes two runs).
RUN_FILES = ("settings.json", "float.pt", "bits.json", "search.json", "report.json", "report.md", "report.html",
             "finetuned.pt", "history.json", RESUME_FILE, "run.log", "model.mbits", "model.onnx")


def load_settings(folder: str | Path) -> RunConfig:
    """The :class:`RunConfig` saved in a run folder's ``settings.json`` (``out`` set to ``folder``).

    Raises:
        FileNotFoundError: ``folder`` is not a run folder.
    """
    path = Path(folder) / "settings.json"
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} is not a mixbits run folder: it has no settings.json")
    raw = json.loads(path.read_text())
    names = {f.name for f in dataclasses.fields(RunConfig)}
    values = {k: v for k, v in raw.items() if k in names}
    for key in ("candidates", "exclude"):
        if key in values:
            values[key] = tuple(values[key])
    values["out"] = str(folder)
    return RunConfig(**values)


def resume_run(folder: str | Path, *, device: str | None = None, progress: bool = True, command: str | None = None,
               on_folder: Callable[[Path], None] | None = None) -> dict[str, Any]:
    """Continue the run in ``folder`` from its last checkpoint (``resume.pt``) with its saved settings.

    The resumed run ends with the same bits and accuracies as an uninterrupted one
    (same device and number of processes).

    Args:
        folder: the run folder of the interrupted ``mixbits search``.
        device: run on another device than the saved settings say (results may then differ slightly).

    Raises:
        FileNotFoundError: not a run folder, or one without a checkpoint.
    """
    config = load_settings(folder)
    if device is not None:
        config = dataclasses.replace(config, device=device)
    if not (Path(folder) / RESUME_FILE).is_file():
        raise FileNotFoundError(f"run folder {str(folder)!r} has no checkpoint ({RESUME_FILE}) to resume from; "
                                f"start the run again without --resume")
    return run_search(config, progress=progress, command=command, resume=True, on_folder=on_folder)


def run_search(config: RunConfig, *, progress: bool = True, command: str | None = None, resume: bool = False,
               on_folder: Callable[[Path], None] | None = None, force: bool = False) -> dict[str, Any]:
    """Run the whole job and write the run folder; returns the report dict.

    The run checkpoints to ``resume.pt`` at the end of every epoch of every stage
    (and between stages); with ``resume=True`` it continues from there. Under
    torchrun every rank runs this function; only rank 0 writes files.

    Args:
        config: the settings.
        progress: show progress bars (rank 0 only).
        command: the command line, for the report.
        resume: continue the run in ``config.out`` from its checkpoint.
        on_folder: called with the run folder once it exists (the CLI attaches its log file there).
        force: overwrite a run already in ``config.out`` (its files are removed first).

    Raises:
        ValueError: bad settings (unknown data set/model/method, unreachable target, unknown
            pin pattern, unwritable folder, a folder holding a run without ``force``), raised before any training.
        RunFolderBusyError: another process is writing the folder.
        FileNotFoundError: a missing float checkpoint, raised before any training.
        OSError: a checkpoint could not be written (disk full...); the previous one is kept.
        NonFiniteLossError: training diverged (the last good checkpoint is kept).
    """
    locks: list[RunLock] = []
    try:
        return _run_search(config, progress=progress, command=command, resume=resume, on_folder=on_folder,
                           force=force, locks=locks)
    finally:
        for lock in locks:
            lock.release()


def _run_search(config: RunConfig, *, progress: bool, command: str | None, resume: bool,
                on_folder: Callable[[Path], None] | None, force: bool, locks: list[RunLock]) -> dict[str, Any]:
    t_start = time.time()
    device = distributed.local_device(resolve_device(config.device))
    distributed.init_from_env(device)
    if config.checkpoint and not Path(config.checkpoint).is_file():
        raise FileNotFoundError(f"float checkpoint {config.checkpoint!r} does not exist")
    torch.manual_seed(config.seed)
    ds = load_dataset(config.data, root=config.data_root)
    model_kwargs = {"in_channels": ds.input_shape[0], "num_classes": ds.num_classes, "input_size": ds.input_shape[1]}
    model = create_model(config.model, **model_kwargs)
    model = _sync_batchnorm(model, device)
    METHODS.get(config.method)  # an unknown method fails here, before any training
    prep = PrepareConfig(candidates=config.candidates, pins=config.pins, exclude=config.exclude)
    # Validate pins, excludes and the target on a throwaway copy before any training.
    probe_space = prepare_(copy.deepcopy(model), prep)
    budget = budget_bits(config.target, probe_space.cost)
    main = distributed.is_main()
    out = Path(distributed.broadcast_object(
        config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{config.target}"))
    if main:  # the lock; temporary files of a write a kill interrupted are removed (final names never touched)
        locks.append(claim_run_dir(out, markers=("settings.json",), outputs=RUN_FILES, force=force, resume=resume))
    state: dict[str, Any] | None = None
    if resume:
        state = load_checkpoint(out / RESUME_FILE)
    if main:
        if on_folder is not None:
            on_folder(out)
        if not resume:
            settings = {**asdict(config), "candidates": list(config.candidates), "pins": dict(config.pins),
                        "method_options": dict(config.method_options), "exclude": list(config.exclude),
                        "out": str(out), "device_resolved": str(device)}
            write_json(out / "settings.json", settings)
    loaders = _loaders(ds, config, device)
    model.to(device)
    stage, stage_state, carry = "float", None, {}
    if state is not None:
        stage, stage_state, carry = state["stage"], state.get("state"), dict(state["carry"])
        if stage == "done" and (out / "report.json").is_file():
            log.info("run %s is already complete", out)
            return json.loads((out / "report.json").read_text())
        if stage == "done":
            raise FileNotFoundError(f"the run in {str(out)!r} is complete but its report.json is missing: its "
                                    f"results are in finetuned.pt and model.mbits (mixbits export {out}); to run it "
                                    f"again, start without --resume and with --force")
        for name, loader in loaders.items():
            load_loader_state(loader, state["loaders"].get(name))
        set_rng_state(state["rng"])
        log.info("resuming %s at the %s stage%s", out, stage,
                 f" after epoch {stage_state['epoch']}" if stage_state else "")

    def checkpoint(stage_name: str, stage_state: dict | None, **extra: Any) -> None:
        if not main:
            return
        path = out / RESUME_FILE
        obj = {"version": 1, "stage": stage_name, "state": stage_state, "carry": carry,
               "loaders": {n: loader_state(ld) for n, ld in loaders.items()}, "rng": rng_state(device), **extra}
        try:
            save_checkpoint(path, obj)
        except OSError as exc:
            raise OSError(exc.errno, f"could not write the checkpoint {path}: {exc.strerror or exc}. The previous "
                                     f"checkpoint is kept: free some space, then continue with "
                                     f"`mixbits search --resume {out}`") from exc
        if stage_state:
            log.info("checkpoint: %s epoch %d saved", stage_name, stage_state["epoch"])
        else:
            log.info("checkpoint: %s stage %s", stage_name, "complete" if stage_name == "done" else "starts")

    try:
        return _stages(config, model, model_kwargs, prep, budget, loaders, device, out, stage, stage_state, carry,
                       checkpoint, progress=progress, command=command, t_start=t_start)
    except NonFiniteLossError as exc:
        kept = (f"The run folder keeps the last good checkpoint ({out / RESUME_FILE}), but --resume repeats the same "
                f"settings." if (out / RESUME_FILE).is_file() else "No epoch finished, so there is nothing to resume.")
        raise NonFiniteLossError(f"{exc} {kept} Start a new run with a lower learning rate (--float-lr or "
                                 f"--finetune-lr, or float_lr / finetune_lr in a -c config) and --force to reuse "
                                 f"{out}.") from None


def _stages(config: RunConfig, model: torch.nn.Module, model_kwargs: dict, prep: PrepareConfig, budget: int,
            loaders: dict, device: torch.device, out: Path, stage: str, stage_state: dict | None, carry: dict,
            checkpoint: Callable[..., None], *, progress: bool, command: str | None, t_start: float) -> dict[str, Any]:
    main = distributed.is_main()
    seconds = carry.setdefault("seconds", {"float": 0.0, "search": 0.0, "finetune": 0.0})

    # 1. float model
    if stage == "float":
        t0 = time.time()
        history: list[dict] = []
        if config.checkpoint:
            load_float_state(model, config.checkpoint)
            log.info("loaded float checkpoint %s", config.checkpoint)
        else:
            history = fit(model, loaders["full"],
                          TrainConfig(epochs=config.float_epochs, lr=config.float_lr, warmup_epochs=1),
                          device=device, progress=progress, desc="float", resume=stage_state,
                          on_checkpoint=lambda s: checkpoint("float", s))
        float_acc = evaluate(model, loaders["test"], device=device)
        if not config.checkpoint and main:
            save_checkpoint(out / "float.pt", {"model": config.model, "model_kwargs": model_kwargs, "data": config.data,
                                               "state_dict": model.state_dict(), "test_accuracy": float_acc})
        seconds["float"] += time.time() - t0
        carry.update(float_test_accuracy=float_acc, float_history=history)
        log.info("float test accuracy %.4f", float_acc)
        stage, stage_state = "search", None
        checkpoint(stage, None)
    else:
        load_float_state(model, config.checkpoint or out / "float.pt")
    teacher = copy.deepcopy(model).eval() if config.distill else None

    # 2. allocate the bits (the differentiable search by default)
    space = prepare_(model, prep)
    if stage == "search":
        t0 = time.time()
        result = allocate(config.method, AllocationContext(
            model=model, space=space, loaders=loaders, budget_bits=budget, target=config.target,
            epochs=config.search_epochs, seed=config.seed, device=device, teacher=teacher, progress=progress,
            options=config.method_options, resume=stage_state, on_checkpoint=lambda s: checkpoint("search", s)))
        if main:
            write_json(out / "search.json", {"method": config.method, "budget_bits": budget, "info": result.info,
                                             "history": result.history})
            write_json(out / "bits.json", result.bits)
        space.fix_(result.bits)
        recalibrate_bn_(model, loaders["full"], device=device)
        seconds["search"] += time.time() - t0
        carry.update(bits=dict(result.bits), method_weight_epochs=float(result.weight_epochs),
                     fill_upgrades=dict(result.info.get("fill_upgrades") or {}),
                     derived_test_accuracy=evaluate(model, loaders["test"], device=device))
        stage, stage_state = "finetune", None
        checkpoint(stage, None, model=model.state_dict())
    elif stage_state is None:  # resumed between the search and the fine-tuning
        model.load_state_dict(_resume_file_model(out))
    bits = {k: int(v) for k, v in carry["bits"].items()}

    # 3. fine-tune at the derived bits; every method gets the same weight epochs in all (a method
    #    that trained no weights while allocating is fine-tuned search_epochs longer)
    ft_epochs = max(0, round(config.search_epochs + config.finetune_epochs - carry.get("method_weight_epochs", 0.0)))
    t0 = time.time()
    ft_history = finetune_(model, space, bits, loaders["full"],
                           TrainConfig(epochs=ft_epochs, lr=config.finetune_lr,
                                       distill_weight=0.5 if config.distill else 0.0),
                           device=device, teacher=teacher, progress=progress, resume=stage_state,
                           on_checkpoint=lambda s: checkpoint("finetune", s))
    recalibrate_bn_(model, loaders["full"], device=device)
    seconds["finetune"] += time.time() - t0
    final_acc = evaluate(model, loaders["test"], device=device)
    report = build_report(
        space, bits, method=config.method, target=config.target, budget_bits=budget,
        fill_upgrades=carry.get("fill_upgrades", {}),
        float_test_accuracy=carry["float_test_accuracy"], derived_test_accuracy=carry["derived_test_accuracy"],
        final_test_accuracy=final_acc, model=config.model, data=config.data,
        seconds={**{k: round(v, 2) for k, v in seconds.items()}, "total": round(time.time() - t_start, 2)},
        device=str(device), run_folder=str(out), **({"command": command} if command else {}))
    if main:
        save_checkpoint(out / "finetuned.pt", {"model": config.model, "model_kwargs": model_kwargs, "data": config.data,
                                               "data_root": config.data_root, "bits": bits,
                                               "candidates": list(config.candidates), "state_dict": model.state_dict(),
                                               "test_accuracy": final_acc})
        # The packed file, so the report states the size measured on disk next to the promise.
        packed = export_model(model, space, out / PACKED_FILE, bits=bits, zoo=config.model, model_kwargs=model_kwargs,
                              input_shape=tuple(loaders["test"].x.shape[1:]))
        report["packed_file"] = {"path": str(out / PACKED_FILE), "promised_bytes": packed.promised_bytes,
                                 "file_bytes": packed.file_bytes, "header_bytes": packed.header_bytes,
                                 "within_bound": packed.within_bound}
        write_json(out / "history.json", {"float": carry.get("float_history", []), "finetune": ft_history})
        write_json(out / "report.json", report)
        write_text(out / "report.md", to_markdown(report))
    carry.pop("float_history", None)
    checkpoint("done", None)
    return report


PACKED_FILE = "model.mbits"


def _resume_file_model(out: Path) -> dict:
    return load_checkpoint(out / RESUME_FILE)["model"]


def _sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Under several GPU ranks, BatchNorm statistics over the global batch (SyncBatchNorm)."""
    if not distributed.is_distributed():
        return model
    has_bn = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if has_bn and device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if has_bn:
        log.warning("BatchNorm statistics are per rank on %s (SyncBatchNorm needs GPUs): the result differs "
                    "slightly from a one-process run with the same global batch", device.type)
    return model
