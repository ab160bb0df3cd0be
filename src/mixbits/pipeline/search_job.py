"""``mixbits search``: the pipeline's stages for one method, target and seed, checkpointed.

:func:`run_search` validates everything (data set, model, pins, target) before
any training, then runs the stages of :mod:`mixbits.pipeline` and writes the run folder:

- ``settings.json``  the resolved settings;
- ``float.pt``       the float checkpoint (when trained here);
- ``bits.json``      {layer name: bits};
- ``search.json``    the method's per-epoch history (expected size, multiplier, probabilities);
- ``report.json`` / ``report.md``  per-layer table, totals, accuracies;
- ``finetuned.pt`` / ``model.mbits``  the fine-tuned weights with their bits, and the packed file;
- ``history.json``   per-epoch loss and accuracy of the float training and the fine-tuning;
- ``resume.pt``      the checkpoint of the last finished epoch (``mixbits search --resume``);
- ``run.log``        the log (written by the command line).

Under ``torchrun`` every process runs :func:`run_search` on its slice of each batch
(see :mod:`mixbits.distributed`); rank 0 alone writes the folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .. import distributed
from ..methods import METHODS
from ..report import build_report, to_markdown
from ..runfiles import RunLock, claim_run_dir, load_checkpoint, save_checkpoint, write_json, write_text
from ..train import NonFiniteLossError, load_loader_state, loader_state, rng_state, set_rng_state
from .allocation import Row, allocate_bits, fix_bits_, prepare_config, start_row
from .config import RunConfig
from .data import Data, build_data
from .export import PACKED_FILE, export_row
from .finetune import finetune_and_evaluate
from .float_model import (check_targets, fit_float_, load_float_state, new_model, resolve_device,
                          trained_float_checkpoint)

__all__ = ["run_search", "resume_run", "load_settings", "RESUME_FILE", "RUN_FILES"]

log = logging.getLogger(__name__)

RESUME_FILE = "resume.pt"
# What a run writes (--force removes them first, so a folder never mixes two runs).
RUN_FILES = ("settings.json", "float.pt", "bits.json", "search.json", "report.json", "report.md", "report.html",
             "finetuned.pt", "history.json", RESUME_FILE, "run.log", PACKED_FILE, "model.onnx")


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
        job, model, saved = _setup(config, resume=resume, on_folder=on_folder, force=force, locks=locks)
        if saved is not None and saved["stage"] == "done":
            return _finished_report(job.out)
        try:
            return _stages(job, model, saved, progress=progress, command=command)
        except NonFiniteLossError as exc:
            kept = (f"The run folder keeps the last good checkpoint ({job.out / RESUME_FILE}), but --resume repeats "
                    f"the same settings." if (job.out / RESUME_FILE).is_file()
                    else "No epoch finished, so there is nothing to resume.")
            raise NonFiniteLossError(f"{exc} {kept} Start a new run with a lower learning rate (--float-lr or "
                                     f"--finetune-lr, or float_lr / finetune_lr in a -c config) and --force to reuse "
                                     f"{job.out}.") from None
    finally:
        for lock in locks:
            lock.release()


@dataclass
class _Job:
    """One run's fixed parts, and what it carries from stage to stage into its checkpoints."""

    config: RunConfig
    data: Data
    out: Path
    budget: int
    t_start: float
    main: bool = field(default_factory=distributed.is_main)
    loaders: dict = field(default_factory=dict)
    carry: dict = field(default_factory=lambda: {"seconds": {"float": 0.0, "search": 0.0, "finetune": 0.0}})

    def checkpoint(self, stage: str, state: dict | None, **extra: Any) -> None:
        """Save ``resume.pt``: the stage, its state (None: the stage starts), the carry, loader and RNG states."""
        if not self.main:
            return
        path = self.out / RESUME_FILE
        obj = {"version": 1, "stage": stage, "state": state, "carry": self.carry,
               "loaders": {n: loader_state(ld) for n, ld in self.loaders.items()},
               "rng": rng_state(self.data.device), **extra}
        try:
            save_checkpoint(path, obj)
        except OSError as exc:
            raise OSError(exc.errno, f"could not write the checkpoint {path}: {exc.strerror or exc}. The previous "
                                     f"checkpoint is kept: free some space, then continue with "
                                     f"`mixbits search --resume {self.out}`") from exc
        if state:
            log.info("checkpoint: %s epoch %d saved", stage, state["epoch"])
        else:
            log.info("checkpoint: %s stage %s", stage, "complete" if stage == "done" else "starts")

    def use_loaders(self, loaders: dict, saved: dict | None) -> None:
        """Checkpoint ``loaders`` from now on; continue them (and the RNG) from ``saved`` when resuming."""
        self.loaders = loaders
        if saved is not None:
            for name, loader in loaders.items():
                load_loader_state(loader, saved["loaders"].get(name))
            set_rng_state(saved["rng"])


def _setup(config: RunConfig, *, resume: bool, on_folder: Callable[[Path], None] | None, force: bool,
           locks: list[RunLock]) -> tuple[_Job, nn.Module, dict | None]:
    """Validate everything, then claim the folder: the job, the float model and the saved checkpoint (or None)."""
    t_start = time.time()
    device = distributed.local_device(resolve_device(config.device))
    distributed.init_from_env(device)
    if config.checkpoint and not Path(config.checkpoint).is_file():
        raise FileNotFoundError(f"float checkpoint {config.checkpoint!r} does not exist")
    data = build_data(config.data, root=config.data_root, train_subset=config.train_subset,
                      test_subset=config.test_subset, device=device)
    torch.manual_seed(config.seed)
    model = new_model(config.model, data)
    METHODS.get(config.method)  # an unknown method fails here, before any training
    (budget,) = check_targets(model, prepare_config(config), [config.target],
                              [(config.method, config.method_options)])  # the method's own check too
    out = Path(distributed.broadcast_object(
        config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.model}-{config.target}"))
    job = _Job(config, data, out, budget, t_start)
    if job.main:  # the lock; temporary files of a write a kill interrupted are removed (final names never touched)
        locks.append(claim_run_dir(out, markers=("settings.json",), outputs=RUN_FILES, force=force, resume=resume))
    saved = load_checkpoint(out / RESUME_FILE) if resume else None
    if job.main:
        if on_folder is not None:
            on_folder(out)
        if not resume:
            write_json(out / "settings.json", {**asdict(config), "candidates": list(config.candidates),
                                               "pins": dict(config.pins), "exclude": list(config.exclude),
                                               "method_options": dict(config.method_options), "out": str(out),
                                               "device_resolved": str(device)})
    if saved is not None:
        job.carry = dict(saved["carry"])
        state = saved.get("state")
        log.info("resuming %s at the %s stage%s", out, saved["stage"], f" after epoch {state['epoch']}" if state else "")
    return job, model, saved


def _finished_report(out: Path) -> dict[str, Any]:
    if not (out / "report.json").is_file():
        raise FileNotFoundError(f"the run in {str(out)!r} is complete but its report.json is missing: its results "
                                f"are in finetuned.pt and model.mbits (mixbits export {out}); to run it again, "
                                f"start without --resume and with --force")
    log.info("run %s is already complete", out)
    return json.loads((out / "report.json").read_text())


def _stages(job: _Job, model: nn.Module, saved: dict | None, *, progress: bool, command: str | None) -> dict[str, Any]:
    stage = saved["stage"] if saved is not None else "float"
    state = saved.get("state") if saved is not None else None
    if stage == "float":
        float_state = _float_stage(job, model, saved, state, progress=progress)
        row = start_row(job.config, job.data, float_state, job.config.seed)
        job.use_loaders(row.loaders, None)
        stage, state, saved = "search", None, None
        job.checkpoint(stage, None)
    else:
        load_float_state(model, job.config.checkpoint or job.out / "float.pt")
        row = start_row(job.config, job.data, model.state_dict(), job.config.seed)
        job.use_loaders(row.loaders, saved)
    if stage == "search":
        _allocation_stage(job, row, state, progress=progress)
        state = None
        job.checkpoint("finetune", None, model=row.model.state_dict())
    elif state is None:  # resumed between the allocation and the fine-tuning
        row.model.load_state_dict(load_checkpoint(job.out / RESUME_FILE)["model"])
    return _finetune_stage(job, row, state, progress=progress, command=command)


def _float_stage(job: _Job, model: nn.Module, saved: dict | None, state: dict | None, *, progress: bool) -> dict:
    """Train (or load) the float model; its weights."""
    c = job.config
    loaders = job.data.loaders(batch_size=c.batch_size, held_out_fraction=c.held_out_fraction, seed=c.seed)
    job.use_loaders(loaders, saved)
    flt = fit_float_(model, c, loaders["weights"], loaders["test"], device=job.data.device, progress=progress,
                     resume=state, on_checkpoint=lambda s: job.checkpoint("float", s))
    if not c.checkpoint and job.main:
        save_checkpoint(job.out / "float.pt", trained_float_checkpoint(c, job.data, flt.state, flt.test_accuracy))
    job.carry["seconds"]["float"] += flt.seconds
    job.carry.update(float_test_accuracy=flt.test_accuracy, float_history=flt.history)
    return flt.state


def _allocation_stage(job: _Job, row: Row, state: dict | None, *, progress: bool) -> None:
    """The method's bits, written to bits.json and search.json, then fixed (BatchNorm re-estimated)."""
    c = job.config
    t0 = time.time()
    result = allocate_bits(row, c, c.method, budget=job.budget, target=c.target, options=c.method_options,
                           progress=progress, resume=state, on_checkpoint=lambda s: job.checkpoint("search", s))
    if job.main:
        write_json(job.out / "search.json", {"method": c.method, "budget_bits": job.budget, "info": result.info,
                                             "history": result.history})
        write_json(job.out / "bits.json", result.bits)
    derived = fix_bits_(row, c, result.bits)
    job.carry["seconds"]["search"] += time.time() - t0
    job.carry.update(bits=dict(result.bits), method_weight_epochs=float(result.weight_epochs),
                     fill_upgrades=dict(result.info.get("fill_upgrades") or {}), derived_test_accuracy=derived)
    if "changed_layers" in result.info:  # a learned method: how far it moved from its start, for the report
        job.carry["search_movement"] = {"init": result.info.get("init"),
                                        "changed_layers": list(result.info["changed_layers"]),
                                        "searchable_layers": len(row.space.searchable())}


def _finetune_stage(job: _Job, row: Row, state: dict | None, *, progress: bool, command: str | None) -> dict[str, Any]:
    """Fine-tune, evaluate, export and report."""
    c, carry = job.config, job.carry
    bits = row.space.cost.normalize(carry["bits"])
    tuned = finetune_and_evaluate(row, c, bits, carry.get("method_weight_epochs", 0.0), progress=progress,
                                  resume=state, on_checkpoint=lambda s: job.checkpoint("finetune", s))
    seconds = carry["seconds"]
    seconds["finetune"] += tuned.seconds
    report = build_report(
        row.space, bits, method=c.method, target=c.target, budget_bits=job.budget,
        fill_upgrades=carry.get("fill_upgrades", {}),
        **({"search_movement": carry["search_movement"]} if "search_movement" in carry else {}),
        float_test_accuracy=carry["float_test_accuracy"], derived_test_accuracy=carry["derived_test_accuracy"],
        final_test_accuracy=tuned.test_accuracy, model=c.model, data=c.data,
        seconds={**{k: round(v, 2) for k, v in seconds.items()}, "total": round(time.time() - job.t_start, 2)},
        device=str(job.data.device), run_folder=str(job.out), **({"command": command} if command else {}))
    if job.main:
        # The packed file, so the report states the size measured on disk next to the promise.
        report["packed_file"] = export_row(job.out, row, c, job.data, bits, tuned.test_accuracy)
        write_json(job.out / "history.json", {"float": carry.get("float_history", []), "finetune": tuned.history})
        write_json(job.out / "report.json", report)
        write_text(job.out / "report.md", to_markdown(report))
    carry.pop("float_history", None)
    job.checkpoint("done", None)
    return report
