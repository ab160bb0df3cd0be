"""Models from elsewhere: ``torchvision:NAME``, ``timm:NAME`` and a user's ``package.module:function``.

torchvision and timm are optional (``pip install 'mixbits[vision]'`` / ``'mixbits[timm]'``);
a missing one is an ImportError that names the extra. Models are built with random
weights (no download); extra keyword arguments go to the library's constructor.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._imports import call_with_accepted, import_callable

__all__ = ["torchvision_model", "timm_model", "user_model", "adapt_input_channels_"]


def adapt_input_channels_(model: nn.Module, in_channels: int) -> nn.Module:
    """Replace the first Conv2d (in module order) by one taking ``in_channels`` inputs, in place.

    Raises:
        ValueError: the model has no Conv2d to adapt.
    """
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                if child.in_channels == in_channels:
                    return model
                new = nn.Conv2d(in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                                child.dilation, 1 if child.groups == 1 else in_channels, child.bias is not None,
                                child.padding_mode)
                setattr(parent, name, new)
                return model
    raise ValueError(f"cannot adapt a {type(model).__name__} to {in_channels} input channels: it has no Conv2d")


def torchvision_model(name: str, *, in_channels: int, num_classes: int, input_size: int, **kwargs: Any) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, num_classes=...)``, first conv adapted to ``in_channels``.

    Raises:
        ImportError: torchvision is not installed.
        ValueError: torchvision has no such model.
    """
    try:
        import torchvision.models as tvm
    except ImportError:
        raise ImportError(f"the model 'torchvision:{name}' needs torchvision: pip install 'mixbits[vision]'") from None
    known = sorted(tvm.list_models())
    if name not in known:
        raise ValueError(f"torchvision has no model {name!r}; known: {', '.join(known)}")
    kwargs.setdefault("weights", None)
    model = tvm.get_model(name, num_classes=num_classes, **kwargs)
    return adapt_input_channels_(model, in_channels)


def timm_model(name: str, *, in_channels: int, num_classes: int, input_size: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(name, pretrained=False, num_classes=..., in_chans=...)``.

    Raises:
        ImportError: timm is not installed.
        ValueError: timm has no such model.
    """
    try:
        import timm
    except ImportError:
        raise ImportError(f"the model 'timm:{name}' needs timm: pip install 'mixbits[timm]'") from None
    if not timm.is_model(name):
        raise ValueError(f"timm has no model {name!r}; list them with timm.list_models()")
    kwargs.setdefault("pretrained", False)
    return timm.create_model(name, num_classes=num_classes, in_chans=in_channels, **kwargs)


def user_model(spec: str, *, in_channels: int, num_classes: int, input_size: int, **kwargs: Any) -> nn.Module:
    """Call a user's ``package.module:function`` with those of in_channels, num_classes, input_size it takes.

    Raises:
        ValueError: the function cannot be imported or does not return an nn.Module.
    """
    fn = import_callable(spec, "model")
    model = call_with_accepted(fn, in_channels=in_channels, num_classes=num_classes, input_size=input_size, **kwargs)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model
