"""Weights computed by a reparametrization (``weight_norm``, ``spectral_norm``): folded into plain parameters.

A layer under ``torch.nn.utils.parametrize`` (``parametrizations.weight_norm``,
``parametrizations.spectral_norm``, or any ``register_parametrization``) computes its
``weight`` from other tensors (``parametrizations.weight.original0/1``) at every
read, and the older hook-based ``torch.nn.utils.weight_norm``/``spectral_norm``
recompute it from ``weight_g``/``weight_v`` or ``weight_orig`` before every forward.
mixbits quantizes the weight the layer computes with: :func:`fold_parametrizations_`
replaces the reparametrization by a plain Parameter holding the weight it computes now
(in eval mode, so spectral_norm's power iteration does not move). The forward is
unchanged at that moment; the search and fine-tuning then train the folded weight
directly, the ``.mbits`` file stores it as any other weight, and :func:`mixbits.load`
folds the same reparametrizations of the model it fills so the file's plain keys fit.
"""

from __future__ import annotations

import logging

from torch import nn
from torch.nn.utils import parametrize

__all__ = ["fold_parametrizations_", "fold_for_keys_"]

log = logging.getLogger(__name__)


def _hook_reparam(module: nn.Module) -> list[tuple[str, object, int]]:
    """(attribute, hook, hook id) of the hook-based weight_norm / spectral_norm on ``module``."""
    from torch.nn.utils.spectral_norm import SpectralNorm
    from torch.nn.utils.weight_norm import WeightNorm

    return [(h.name, h, k) for k, h in module._forward_pre_hooks.items() if isinstance(h, (WeightNorm, SpectralNorm))]


def fold_parametrizations_(model: nn.Module, wanted=None) -> list[str]:
    """Replace every reparametrized tensor of ``model`` by a plain Parameter with its current value, in place.

    Args:
        model: any module.
        wanted: optional predicate ``(module, attribute) -> bool``; only those tensors are folded.

    Returns:
        the state-dict keys of the folded tensors (``"conv.weight"``), in model order.
    """
    # Not under no_grad: remove_parametrizations makes a Parameter of a weight with several originals
    # (weight_norm's g and v) only when the computed weight requires grad, and a buffer otherwise.
    folded = []
    was_training = model.training
    model.eval()  # spectral_norm updates its power-iteration vectors in training mode
    try:
        for name, module in list(model.named_modules()):
            prefix = f"{name}." if name else ""
            if parametrize.is_parametrized(module):
                for attr in list(module.parametrizations.keys()):
                    if wanted is None or wanted(module, attr):
                        requires_grad = any(p.requires_grad for p in module.parametrizations[attr].parameters())
                        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
                        if attr not in module._parameters:  # every original frozen: torch made it a buffer
                            value = module._buffers.pop(attr)
                            module.register_parameter(attr, nn.Parameter(value.detach(), requires_grad=False))
                        module._parameters[attr].requires_grad_(requires_grad)
                        folded.append(prefix + attr)
            for attr, hook, key in _hook_reparam(module):
                if wanted is None or wanted(module, attr):
                    requires_grad = any(p.requires_grad for p in module.parameters(recurse=False))
                    hook.remove(module)  # registers the computed weight as the Parameter ``attr``
                    del module._forward_pre_hooks[key]
                    module._parameters[attr].requires_grad_(requires_grad)
                    folded.append(prefix + attr)
    finally:
        model.train(was_training)
    if folded:
        log.info("folded the reparametrized weights %s into plain parameters (their current values): the model "
                 "computes the same; search and fine-tuning train the folded weights", folded[:8])
    return folded


def fold_for_keys_(model: nn.Module, keys) -> list[str]:
    """Fold the reparametrized tensors of ``model`` whose plain state-dict key is in ``keys``, in place.

    What :func:`mixbits.load` does to the model it fills: a file stores a folded weight under its
    plain key (``conv.weight``), where the float model has ``conv.parametrizations.weight.original0/1``.

    Returns:
        the folded keys.
    """
    keys = set(keys)
    names = {id(m): n for n, m in model.named_modules()}

    def wanted(module: nn.Module, attr: str) -> bool:
        name = names.get(id(module), "")
        return (f"{name}.{attr}" if name else attr) in keys

    return fold_parametrizations_(model, wanted)
