"""Stage 5, export: the fine-tuned weights with their bits (``finetuned.pt``) and the packed ``.mbits`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..export.exporter import export_model
from ..export.preprocessing import Preprocessing
from ..runfiles import save_checkpoint
from .allocation import Row
from .config import Settings
from .data import Data

__all__ = ["export_row", "PACKED_FILE"]

PACKED_FILE = "model.mbits"


def export_row(folder: Path, row: Row, settings: Settings, data: Data, bits: Mapping[str, int],
               test_accuracy: float) -> dict[str, Any]:
    """Write ``finetuned.pt`` and ``model.mbits`` (with the data set's input normalisation and class names) in
    ``folder``; the packed file's sizes, for the report."""
    save_checkpoint(folder / "finetuned.pt", {
        "model": settings.model, "model_kwargs": data.model_kwargs, "data": settings.data,
        "data_root": settings.data_root, "bits": dict(bits), "candidates": list(settings.candidates),
        "state_dict": row.model.state_dict(), "test_accuracy": test_accuracy})
    ds = data.dataset
    packed = export_model(row.model, row.space, folder / PACKED_FILE, bits=bits, zoo=settings.model,
                          model_kwargs=data.model_kwargs, input_shape=tuple(row.loaders["test"].x.shape[1:]),
                          preprocessing=Preprocessing(mean=ds.mean, std=ds.std, class_names=ds.class_names))
    return {"path": str(folder / PACKED_FILE), "promised_bytes": packed.promised_bytes,
            "file_bytes": packed.file_bytes, "header_bytes": packed.header_bytes, "within_bound": packed.within_bound}
