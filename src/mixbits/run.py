"""The ``mixbits search`` job (kept here for ``from mixbits.run import ...``; see :mod:`mixbits.pipeline`)."""

from .pipeline.config import RunConfig
from .pipeline.float_model import load_float_state, resolve_device
from .pipeline.search_job import RESUME_FILE, RUN_FILES, load_settings, resume_run, run_search

__all__ = ["RunConfig", "run_search", "resume_run", "load_settings", "resolve_device", "load_float_state",
           "RESUME_FILE", "RUN_FILES"]
