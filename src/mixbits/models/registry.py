"""Model registry and name resolution.

A model name is a registered name (``resnet20``...), ``torchvision:NAME``,
``timm:NAME``, or a user's ``package.module:function``.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..registry import Registry

__all__ = ["MODELS", "register_model", "create_model"]

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
register_model = MODELS.register


def create_model(name: str, *, in_channels: int, num_classes: int, input_size: int, **kwargs) -> nn.Module:
    """Build a model for inputs of ``in_channels`` x ``input_size`` x ``input_size`` and ``num_classes`` classes.

    Args:
        name: a registered name, ``torchvision:NAME``, ``timm:NAME`` or ``package.module:function``.
        kwargs: passed on to the factory.

    Raises:
        ValueError: an unknown name (the error lists the known ones).
        ImportError: torchvision or timm asked for but not installed (the error names the extra).
    """
    dims = dict(in_channels=in_channels, num_classes=num_classes, input_size=input_size)
    if name in MODELS:
        return MODELS.get(name)(**dims, **kwargs)
    if ":" not in name:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS.names())}; "
                         f"or torchvision:NAME, timm:NAME, package.module:function")
    from . import external

    prefix, _, rest = name.partition(":")
    if prefix == "torchvision":
        return external.torchvision_model(rest, **dims, **kwargs)
    if prefix == "timm":
        return external.timm_model(rest, **dims, **kwargs)
    return external.user_model(name, **dims, **kwargs)
