"""The ``mixbits sweep`` job (kept here for ``from mixbits.sweep import ...``; see :mod:`mixbits.pipeline`)."""

from .pipeline.config import SweepConfig, parse_method
from .pipeline.sweep_job import (ROW_FIELDS, SweepSetup, plot_pareto, prepare_sweep, run_row, summary, sweep,
                                 write_table)

__all__ = ["SweepConfig", "SweepSetup", "sweep", "prepare_sweep", "run_row", "write_table", "plot_pareto",
           "parse_method", "summary", "ROW_FIELDS"]
