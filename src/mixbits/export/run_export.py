"""Export from a run folder (``mixbits search --out RUN``): rebuild the fine-tuned model, then export.

The run folder's ``finetuned.pt`` names the zoo model and its arguments, the bits
and the weights; ``settings.json`` the excluded layers, pins and granularity, so the
rebuilt BitSpace (and its promised size) is the one the run reported. A layer's bits
are an int, or a list (JSON) / tuple of one int per structure.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..cost import Bits
from ..runfiles import load_checkpoint
from ..space import BitSpace, PrepareConfig, prepare_
from .exporter import ExportResult, export_model
from .preprocessing import Preprocessing

log = logging.getLogger(__name__)

__all__ = ["RunModel", "load_run_model", "export_run", "run_test_loader", "run_preprocessing"]

CHECKPOINT_NAME = "finetuned.pt"


@dataclass
class RunModel:
    """The fake-quantized model of a run, rebuilt from its folder.

    Attributes:
        model: the prepared model at the run's bits, in eval mode, on the CPU.
        space: its BitSpace, fixed at ``bits``.
        bits: {layer name: bits}: an int, or a tuple per structure for a layer with structures.
        info: the checkpoint's fields other than the weights (model, model_kwargs, data, test_accuracy...).
        report_model_bits: the model size ``report.json`` promised, if the folder has one.
    """

    model: nn.Module
    space: BitSpace
    bits: dict[str, Bits]
    info: dict[str, Any]
    report_model_bits: int | None

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        kw = self.info.get("model_kwargs") or {}
        if "in_channels" in kw and "input_size" in kw:
            return (int(kw["in_channels"]), int(kw["input_size"]), int(kw["input_size"]))
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{str(path)!r} is not readable JSON: {exc}") from None
    return obj if isinstance(obj, dict) else None


def load_run_model(run_dir: str | Path) -> RunModel:
    """Rebuild the fine-tuned, fake-quantized model of a run folder.

    Raises:
        FileNotFoundError: no such folder, or no ``finetuned.pt`` in it.
        ValueError: a checkpoint without a zoo model name or bits, or weights that do not fit.
    """
    from ..models import create_model

    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder {str(run)!r} does not exist")
    ckpt_path = run / CHECKPOINT_NAME
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"{str(run)!r} has no {CHECKPOINT_NAME}: is it the --out folder of a finished "
                                f"mixbits search?")
    ckpt = load_checkpoint(ckpt_path)
    for key in ("model", "bits", "state_dict"):
        if key not in ckpt:
            raise ValueError(f"{str(ckpt_path)!r} lacks {key!r}: not a mixbits fine-tuned checkpoint")
    settings = _read_json(run / "settings.json") or {}
    kwargs = dict(ckpt.get("model_kwargs") or {})
    model = create_model(str(ckpt["model"]), **kwargs)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise ValueError(f"{str(ckpt_path)!r} does not fit model {ckpt['model']!r}: "
                         f"{' '.join(str(exc).splitlines()[:3])}") from None
    bits: dict[str, Bits] = {str(k): int(v) if isinstance(v, (int, float)) else tuple(int(b) for b in v)
                             for k, v in ckpt["bits"].items()}
    used = {b for v in bits.values() for b in ((v,) if isinstance(v, int) else v)}
    candidates = tuple(ckpt.get("candidates") or settings.get("candidates") or sorted(used))
    prep = PrepareConfig(candidates=tuple(sorted(set(candidates) | used)),
                         exclude=tuple(settings.get("exclude") or ()), pins=dict(settings.get("pins") or {}),
                         granularity=str(settings.get("granularity") or "layer"))
    space = prepare_(model, prep)
    bits = space.cost.normalize(bits)
    space.fix_(bits)
    report = _read_json(run / "report.json") or {}
    promised = (report.get("totals") or {}).get("model_bits")
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return RunModel(model=model.eval(), space=space, bits=bits, info=info,
                    report_model_bits=int(promised) if promised is not None else None)


def run_preprocessing(info: dict[str, Any]) -> Preprocessing | None:
    """The input normalisation and class names of the run's data set, or None (logged) when it cannot be read."""
    from ..data import load_dataset

    try:
        ds = load_dataset(str(info.get("data")), root=info.get("data_root"))
        return Preprocessing(mean=ds.mean, std=ds.std, class_names=ds.class_names)
    except (ImportError, OSError, ValueError) as exc:
        log.warning("the run's data set %r cannot be read (%s): the file records no input normalisation",
                    info.get("data"), str(exc)[:200])
        return None


def export_run(run_dir: str | Path, out: str | Path) -> tuple[ExportResult, RunModel]:
    """Export a run folder's fine-tuned model to ``out`` (a ``.mbits`` file), with its data set's preprocessing.

    Returns:
        (the export result, the rebuilt fake-quantized model to check against).
    """
    rm = load_run_model(run_dir)
    result = export_model(rm.model, rm.space, out, bits=rm.bits, zoo=str(rm.info["model"]),
                          model_kwargs=rm.info.get("model_kwargs") or {}, input_shape=rm.input_shape,
                          preprocessing=run_preprocessing(rm.info))
    return result, rm


def run_test_loader(info: dict[str, Any], *, batch_size: int = 512):
    """The run's test split, normalised as in training (for accuracy checks)."""
    from ..data import TensorLoader, load_dataset

    ds = load_dataset(str(info.get("data")), root=info.get("data_root"))
    return TensorLoader(ds.test_x, ds.test_y, batch_size=batch_size, shuffle=False, mean=ds.mean, std=ds.std,
                        device=torch.device("cpu"))
