"""Model registry."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry

__all__ = ["MODELS", "register_model", "create_model"]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def create_model(name: str, *, in_channels: int, num_classes: int, input_size: int, **kwargs) -> nn.Module:
    """Build a registered model for inputs of ``in_channels`` x ``input_size`` x ``input_size``."""
    return MODELS.get(name)(in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs)
