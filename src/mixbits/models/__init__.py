"""The model registry: ``create_model(name, in_channels=..., num_classes=..., input_size=...)``.

Built-in: ``digits_cnn``, ``lenet5``, ``resnet20``/``resnet32``/``resnet56`` (CIFAR, option-A
shortcuts), ``vgg_small``, ``mobilenetv2_cifar``. Also ``torchvision:NAME``, ``timm:NAME`` and
a user's ``package.module:function`` (see :mod:`mixbits.models.external`).
"""

from .registry import MODELS, create_model, register_model
from . import lenet, mobilenetv2_cifar, resnet_cifar, small, vgg_small  # noqa: F401  (register the built-in models)

__all__ = ["MODELS", "create_model", "register_model"]
