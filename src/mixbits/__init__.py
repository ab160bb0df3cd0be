"""mixbits: automatic mixed-precision (1-bit to float) search for PyTorch models.

Module map:

- ``quant``     pure tensor quantizers (binary, uniform 2..8, half, float), straight-through.
- ``space``     model surgery: ``prepare_`` gives each Conv/Linear weight a bitwidth Decision
                (``mixture``: the Decision; ``bitspace``: all decisions and their cost; ``price``: the budget price).
- ``allocate``  the default path: ``allocate(model, space, train, held_out, target=...)`` with any method.
- ``methods``   the allocation methods by name (``hessian``, ``search``, ``random``, ``uniform``);
                ``sensitivity``: the Hessian-trace estimate they share.
- ``cost``      the one cost model: exact/expected sizes, compressions, average bits.
- ``budget``    size targets ("24x", "300KB", "1.5bits") -> a budget in bits.
- ``search``    the differentiable search under the budget (Lagrange price solved exactly).
- ``derive``    exact multiple-choice knapsack (HiGHS) from preferences to bits.
- ``train`` / ``finetune``  float training, quantization-aware fine-tuning, evaluation.
- ``data`` / ``models``     registries of data sets and models; device-resident batches.
- ``pipeline``  the stages (data, float model, allocation, fine-tuning, export) and the search/sweep jobs.
- ``report`` / ``cli``  reports and the command line (``run`` / ``sweep``: the jobs' public names).
- ``export``    the packed ``.mbits`` file: ``export_model``, ``load``, ``export_onnx``.
"""

import sys
import types
from typing import TYPE_CHECKING, Any

from ._imports import lazy_attributes

if TYPE_CHECKING:
    from .allocate import DEFAULT_METHOD, DEFAULT_POST_TRAINING_METHOD, allocate
    from .budget import Target, budget_bits, parse_target
    from .cost import CostModel, LayerInfo
    from .derive import solve_budget
    from .export import CodeNotTrustedError, ExportResult, MbitsFormatError, export_model, export_onnx, load
    from .finetune import finetune_
    from .quant import fake_quantize, weight_codes
    from .report import build_report, format_table, to_markdown
    from .search import SearchConfig, SearchResult, derive_bits, search
    from .bitspace import BitSpace
    from .mixture import Decision
    from .space import PrepareConfig, prepare_, unprepare_
    from .train import NonFiniteLossError, TrainConfig, evaluate, fit, recalibrate_bn_

# Public names resolve on first use (PEP 562): `import mixbits` and `mixbits --help` stay free of torch.
_LAZY = {
    "allocate": "allocate",
    "DEFAULT_METHOD": "allocate",
    "DEFAULT_POST_TRAINING_METHOD": "allocate",
    "Allocation": "methods",
    "Target": "budget",
    "budget_bits": "budget",
    "parse_target": "budget",
    "CostModel": "cost",
    "LayerInfo": "cost",
    "solve_budget": "derive",
    "CodeNotTrustedError": "export",
    "ExportResult": "export",
    "MbitsFormatError": "export",
    "export_model": "export",
    "export_onnx": "export",
    "load": "export",
    "finetune_": "finetune",
    "fake_quantize": "quant",
    "weight_codes": "quant",
    "build_report": "report",
    "format_table": "report",
    "to_markdown": "report",
    "SearchConfig": "search",
    "SearchResult": "search",
    "derive_bits": "search",
    "search": "search",
    "BitSpace": "bitspace",
    "Decision": "mixture",
    "PrepareConfig": "space",
    "prepare_": "space",
    "unprepare_": "space",
    "NonFiniteLossError": "train",
    "TrainConfig": "train",
    "evaluate": "train",
    "fit": "train",
    "recalibrate_bn_": "train",
}

__version__ = "0.1.0"

__all__ = [
    "Allocation", "DEFAULT_METHOD", "DEFAULT_POST_TRAINING_METHOD", "allocate", "BitSpace", "CostModel", "Decision", "LayerInfo", "NonFiniteLossError", "PrepareConfig", "SearchConfig",
    "SearchResult", "Target", "TrainConfig", "budget_bits", "build_report", "derive_bits", "evaluate",
    "fake_quantize", "finetune_", "fit", "format_table", "parse_target", "prepare_", "recalibrate_bn_", "search", "solve_budget",
    "to_markdown", "unprepare_", "weight_codes",
    "CodeNotTrustedError", "ExportResult", "MbitsFormatError", "export_model", "export_onnx", "load",
]


__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # `import mixbits.search` binds the submodule to the package; the public name stays the function.
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
