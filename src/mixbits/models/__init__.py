"""The model registry: ``create_model(name, in_channels=..., num_classes=..., input_size=...)``."""

from .registry import MODELS, create_model, register_model
from . import small  # noqa: F401  (registers the built-in models)

__all__ = ["MODELS", "create_model", "register_model"]
