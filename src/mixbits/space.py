"""Model surgery: turn any nn.Module into a searchable one, in place.

``prepare_(model, config)`` finds every weight tensor that :mod:`mixbits.targets`
declares (Conv, ConvTranspose, Linear, Bilinear, Embedding, MultiheadAttention, LSTM/GRU/RNN,
Hugging Face Conv1D, and kinds users register) or that the user names, folds the
reparametrized ones (weight_norm, spectral_norm) into plain parameters first, and gives each
distinct tensor one
:class:`Decision`: logits over the candidate bitwidths. Every module holding the
tensor, under any name, has its class swapped for a subclass whose attribute
returns the mixed weight ``sum_b p_b Q_b(W)``, so the layer still runs ONE
convolution or matmul. Parameters stay in ``_parameters`` under their float
names: float checkpoints load unchanged and ``model.state_dict()`` has exactly
the float keys.

The decisions (:mod:`mixbits.mixture`) live in the returned :class:`BitSpace`
(:mod:`mixbits.bitspace`), not in the model, so the
weights (``model.parameters()``) and the logits (``space.parameters()``) are two
plain parameter sets for the two optimisers of the search.

A module used in two places, or two modules sharing one weight Parameter, get a
single decision and are counted once.

With ``PrepareConfig(granularity=...)`` finer than ``layer``, a decision holds one
row of logits per structure (a run of output channels, see :mod:`mixbits.granularity`):
logits of shape (G, K), one mixture per channel, still one matmul per layer. The
budget solver and the price projection work on units: a layer without structures is
one unit, a layer with structures one unit per structure (``CostModel.cost_table``).
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from .bitspace import BitSpace
from .budget import budget_bits, reachable_range
from .cost import CostModel, LayerInfo
from .export.records import LayerRecord
from .export.writer import float_records, header_bytes_bound
from .granularity import Granularity, parse_granularity
from .mixture import Decision
from .parametrized import fold_parametrizations_
from .quant import FLOAT_BITS, check_bits
from .targets import (QUANTIZABLE_TYPES, channel_dim, declared_attrs, is_swapped, quantized_attrs, restore_class_,
                      swap_class_, unwrap_compiled)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CANDIDATES",
    "PrepareConfig",
    "Decision",
    "BitSpace",
    "prepare_",
    "unprepare_",
    "float_weight",
    "QUANTIZABLE_TYPES",
]

DEFAULT_CANDIDATES = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    """What to quantize and with which candidates.

    Attributes:
        candidates: bitwidths the search chooses from, any subset of 1..8, 16, 32.
        include: glob patterns of weight names to quantize (default: all). A weight is named
            by its module (``features.0``) when it is the module's ``weight``, else by its
            parameter's key (``attn.in_proj_weight``, ``lstm.weight_hh_l0``).
        exclude: glob patterns of weight names to keep in float.
        pins: {glob pattern: bits}; matching weights are fixed at those bits.
        params: fully qualified names of other parameters (two or more dimensions) to quantize,
            e.g. ``("pos_embedding",)``.
        target: an optional size target (``"16x"``, ``"300KB"``, ``"1.5bits"``; ``"16x:model"`` binds
            the whole model, see :mod:`mixbits.budget`) checked against what the candidates can reach
            right in ``prepare_``.
        granularity: ``"layer"`` (one bitwidth per weight), ``"channel"``, ``"group:N"`` (runs of N
            output channels) or ``"head"`` (attention heads of the attention projections); see
            :mod:`mixbits.granularity`. Pinned weights always take one bitwidth.

    Every include, exclude and pin pattern must match at least one weight.
    """

    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    pins: Mapping[str, int] = field(default_factory=dict)
    params: tuple[str, ...] = ()
    target: str | None = None
    granularity: str = "layer"

    def __post_init__(self) -> None:
        object.__setattr__(self, "granularity", parse_granularity(self.granularity).text)
        for what in ("candidates", "include", "exclude", "params"):
            value = getattr(self, what)
            if isinstance(value, (str, bytes)):
                raise ValueError(f"{what} must be a list, got the string {value!r}: write {what}=({value!r},)")
        if not isinstance(self.pins, Mapping):
            raise ValueError(f"pins must be a mapping {{pattern: bits}}, got {type(self.pins).__name__}")
        cands = tuple(sorted(set(int(b) for b in self.candidates)))
        if not cands:
            raise ValueError("candidates is empty: give at least one bitwidth, e.g. 1,2,4,8,16,32")
        for b in cands:
            check_bits(b)
        object.__setattr__(self, "candidates", cands)
        for what in ("include", "exclude", "params"):
            object.__setattr__(self, what, tuple(str(p) for p in getattr(self, what)))
        for pattern, b in self.pins.items():
            if isinstance(b, float) and b.is_integer():
                b = int(b)
            try:
                check_bits(b)
            except ValueError as exc:
                raise ValueError(f"pin {pattern}={b!r}: {exc}") from None
        object.__setattr__(self, "pins", {str(k): int(v) for k, v in self.pins.items()})


def float_weight(module: nn.Module, attr: str = "weight") -> torch.Tensor:
    """The float Parameter ``attr`` of a layer, prepared or not."""
    return module._parameters[attr]


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _key(module_name: str, attr: str) -> str:
    """State-dict key of a module's parameter."""
    return f"{module_name}.{attr}" if module_name else attr


def _use_name(module_name: str, attr: str) -> str:
    """How a weight is addressed in bit assignments: the module's name for ``weight``, else the parameter's key."""
    return module_name if attr == "weight" else _key(module_name, attr)


def _float_rest_bits(model: nn.Module, quantized_ids: set[int]) -> int:
    """Bits of all float parameters and floating buffers that are not quantized weights."""
    seen: set[int] = set(quantized_ids)
    total = 0
    for t in list(model.parameters()) + [b for b in model.buffers()]:
        if id(t) in seen or not t.is_floating_point():
            continue
        seen.add(id(t))
        total += t.numel() * FLOAT_BITS
    return total


def _file_overhead_bits(model: nn.Module, layers: list[LayerInfo], quantized_ids: set[int], rest_bits: int) -> int:
    """Upper bound on the header of the model's ``.mbits`` file plus the byte padding of its codes, bits."""
    records = [LayerRecord(name=i.name, aliases=i.aliases, kind=i.kind, shape=i.shape, bits=32, keys=i.state_keys,
                           channel_dim=i.channel_dim, group_size=i.group_size) for i in layers]
    floats = [rec for rec, _ in float_records(model, quantized_ids)]
    float_model_bits = FLOAT_BITS * sum(i.num_weights for i in layers) + rest_bits
    # Codes are padded to a byte per layer, and per run of one bitwidth in a layer with structures.
    runs = sum(len([b for b in i.candidates if b <= 8]) if i.grouped else 1 for i in layers)
    return 8 * header_bytes_bound(records, floats, float_model_bits) + 7 * runs


def _check_patterns(config: PrepareConfig, names: list[str]) -> None:
    if not names:
        return  # prepare_ reports that there is nothing to quantize
    listing = ", ".join(names[:40]) + (" ..." if len(names) > 40 else "")
    for what, patterns in (("include", config.include), ("exclude", config.exclude), ("pin", list(config.pins))):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"{what} pattern {pattern!r} matches no quantizable layer; the quantizable "
                                 f"weights are: {listing}")


_Use = tuple[str, nn.Module, str]  # (module name, module, attribute)

# Children of an attention module (one with an integer ``head_dim`` or ``attention_head_size``)
# whose output features are laid out head by head.
HEAD_PROJECTIONS = frozenset({"q_proj", "k_proj", "v_proj", "qkv_proj", "query", "key", "value", "c_attn", "qkv",
                              "Wqkv", "in_proj", "q", "k", "v", "query_key_value", "W_pack", "to_q", "to_k", "to_v"})
_MHA_ATTRS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def _head_dim(model: nn.Module, uses: list[_Use]) -> int:
    """Output channels per attention head of a weight, or 0 when it is not an attention projection."""
    for name, module, attr in uses:
        if isinstance(module, nn.MultiheadAttention) and attr in _MHA_ATTRS:
            return int(module.head_dim)
        parent_name, _, leaf = name.rpartition(".")
        if not name or leaf not in HEAD_PROJECTIONS or attr != "weight":
            continue
        parent = model.get_submodule(parent_name) if parent_name else model
        hd = getattr(parent, "head_dim", getattr(parent, "attention_head_size", None))
        if isinstance(hd, int) and not isinstance(hd, bool) and hd > 0:
            return hd
    return 0


def _structure_size(granularity: Granularity, model: nn.Module, uses: list[_Use], channels: int) -> int:
    """``LayerInfo.group_size`` of a weight with ``channels`` output channels: 0 for one bitwidth."""
    if granularity.kind == "head":
        size = _head_dim(model, uses)
        if size and channels % size:
            size = 0  # not laid out head by head
    else:
        size = granularity.size
    return size if 0 < size < channels else 0


def _find_targets(model: nn.Module, config: PrepareConfig) -> dict[int, list[_Use]]:
    """{id(Parameter): every (module name, module, attribute) that holds it}, targets in model order."""
    named = list(model.named_modules(remove_duplicate=False))
    wanted = set(config.params)
    targets: dict[int, list[_Use]] = {}
    for mname, module in named:
        attrs = list(quantized_attrs(module))
        attrs += [a for a, p in module._parameters.items() if _key(mname, a) in wanted and a not in attrs]
        for attr in attrs:
            p = module._parameters[attr]
            if isinstance(p, nn.parameter.UninitializedParameter):
                raise ValueError(f"layer {mname!r} is lazy and not initialised yet: run one forward pass before prepare_")
            if _key(mname, attr) in wanted and p.dim() < 2:
                raise ValueError(f"parameter {_key(mname, attr)!r} has {p.dim()} dimension(s): only tensors of two or "
                                 f"more dimensions are quantized (one scale per row along dim 0)")
            targets.setdefault(id(p), [])
    named_params = {_key(n, a) for n, m in named for a, p in m._parameters.items() if p is not None}
    missing = sorted(wanted - named_params)
    if missing:
        raise ValueError(f"params {missing} are not parameters of the model; its parameters are: "
                         + ", ".join(sorted(named_params)[:40]))
    # Every holder of a target tensor computes with the quantized tensor, whatever its type.
    for mname, module in named:
        for attr, p in module._parameters.items():
            if p is not None and id(p) in targets:
                use = (mname, module, attr)
                if not any(u[0] == mname and u[2] == attr for u in targets[id(p)]):
                    targets[id(p)].append(use)
    return targets


def _warn_low_coverage(model: nn.Module, quantized_ids: set[int], share: float, num_params: int,
                       num_quantized: int, left_out: set[int]) -> None:
    """Warn that most parameters stay float, naming the largest float tensors and how to quantize them."""
    seen, floats = set(quantized_ids), []
    for key, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            floats.append((key, p))
    floats.sort(key=lambda kp: -kp[1].numel())
    big = [(k, p) for k, p in floats if p.dim() >= 2 and id(p) not in left_out][:3]  # not excluded by the user
    how = (f"; to quantize them: PrepareConfig(params={tuple(k for k, _ in big)!r}) (command line: "
           f"{' '.join('--param ' + k for k, _ in big)})" if big else "")
    log.warning("only %.1f%% of the parameters are quantized; %d stay float (largest: %s): whole-model compression "
                "stays below %.2fx whatever the target (a target such as '16x:model' binds the whole model)%s",
                100 * share, num_params - num_quantized,
                ", ".join(f"{k} {tuple(p.shape)}" for k, p in floats[:3]), 1 / max(1 - share, 1e-12), how)


def prepare_(model: nn.Module, config: PrepareConfig | None = None) -> BitSpace:
    """Make ``model`` searchable in place and return its :class:`BitSpace`.

    Args:
        model: any nn.Module (a ``torch.compile``'d one is prepared through the module it wraps); the
            weights of its Conv1d/2d/3d, ConvTranspose1d/2d/3d, Linear, Bilinear, Embedding(Bag),
            MultiheadAttention, LSTM/GRU/RNN and Hugging Face Conv1D layers (and subclasses, and
            kinds added with :func:`mixbits.targets.register_target`), plus ``config.params``, are
            prepared. Weights under ``weight_norm``/``spectral_norm`` parametrizations are first
            folded into plain parameters (:mod:`mixbits.parametrized`).
        config: candidates, include/exclude patterns, pins, extra parameters and an optional target.

    Returns:
        the BitSpace holding one Decision per distinct weight tensor.

    Raises:
        ValueError: an include, exclude or pin pattern that matches no weight, two pins or a
            pin and an exclude on one weight, a model already prepared, a model with nothing
            to quantize, or a ``config.target`` this model cannot reach.
    """
    config = config or PrepareConfig()
    granularity = parse_granularity(config.granularity)
    model = unwrap_compiled(model)  # a torch.compile'd model is prepared through the module it wraps
    if any(is_swapped(m) for m in model.modules()):
        raise ValueError("model is already prepared: call unprepare_(model) first or use a fresh model")
    module_names = {id(m): n for n, m in model.named_modules()}
    fold_parametrizations_(model, lambda m, a: a in declared_attrs(m)
                           or _key(module_names.get(id(m), ""), a) in config.params)
    targets = _find_targets(model, config)
    _check_patterns(config, [_use_name(n, a) for uses in targets.values() for n, _, a in uses])

    layers: list[LayerInfo] = []
    decisions: list[Decision] = []
    owners: dict[str, tuple[nn.Module, str]] = {}
    per_module: dict[int, tuple[nn.Module, dict[str, Decision]]] = {}
    float_units: dict[int, str] = {}  # id(Parameter) -> why it stays float
    for pid, uses in targets.items():
        names = list(dict.fromkeys(_use_name(n, a) for n, _, a in uses))
        pins = {bits for pattern, bits in config.pins.items() if any(fnmatch.fnmatchcase(n, pattern) for n in names)}
        excluded = any(_matches(n, config.exclude) for n in names)
        included = any(_matches(n, config.include) for n in names)
        if len(pins) > 1:
            raise ValueError(f"weight {names[0]!r} (also used as {names[1:]}) matches pins with different bits "
                             f"{sorted(pins)}: pin it once")
        if pins and (excluded or not included):
            raise ValueError(f"weight {names[0]!r} is pinned and also {'excluded' if excluded else 'not included'}: "
                             f"drop the pin or the pattern")
        if excluded or not included:
            float_units[pid] = "excluded" if excluded else "not included"
            continue
        pin = next(iter(pins)) if pins else None
        name, module, attr = uses[0]
        owner = next(((n, m) for n, m, a in uses if attr in quantized_attrs(m)), (name, module))[1]
        w = module._parameters[attr]
        # The holders that declare the tensor a target say where its output channels are.
        dims = {n: channel_dim(m, a) for n, m, a in uses if a in quantized_attrs(m)}
        if len(set(dims.values())) > 1:
            raise ValueError(f"weight {names[0]!r} is shared by layers that read its output channels along "
                             f"different dimensions ({', '.join(f'{n}: dim {d}' for n, d in dims.items())}): "
                             f"one scale per channel cannot serve both; exclude it")
        cdim = next(iter(dims.values()), 0)
        cands = (pin,) if pin is not None else config.candidates
        gsize = 0 if pin is not None else _structure_size(granularity, model, uses, w.shape[cdim])
        info = LayerInfo(name=names[0], aliases=tuple(names[1:]), kind=type(owner).__name__, shape=tuple(w.shape),
                         candidates=cands, pinned=pin is not None,
                         keys=tuple(dict.fromkeys(_key(n, a) for n, _, a in uses)), channel_dim=cdim,
                         group_size=gsize)
        decision = Decision(cands, channel_dim=cdim,
                            group_channels=info.group_channels if info.grouped else None).to(w.device)
        layers.append(info)
        decisions.append(decision)
        owners[info.name] = (module, attr)
        for _, m, a in uses:
            per_module.setdefault(id(m), (m, {}))[1][a] = decision
    if not layers:
        raise ValueError(
            "the model has nothing to quantize: no Conv, ConvTranspose, Linear, Bilinear, Embedding, "
            "MultiheadAttention, LSTM/GRU/RNN or Hugging Face Conv1D weight was found (or all were excluded); name "
            "other weights with params=, or add a layer kind with mixbits.targets.register_target"
        )
    for m, decs in per_module.values():
        swap_class_(m, decs)

    quantized_ids = {id(m._parameters[a]) for m, a in owners.values()}
    float_layers: list[tuple[str, str, int, str]] = []
    for name, module in model.named_modules():
        own = [p for p in module._parameters.values() if p is not None]
        if not own or any(id(p) in quantized_ids for p in own):
            continue
        why = next((float_units[id(p)] for p in own if id(p) in float_units), "type not quantized")
        label = name or ", ".join(a for a, p in module._parameters.items() if p is not None)  # the root's own
        float_layers.append((label, type(module).__name__, sum(p.numel() for p in own), why))
    num_params = sum(p.numel() for p in model.parameters())
    rest_bits = _float_rest_bits(model, quantized_ids)
    cost = CostModel(layers, rest_bits, num_params=num_params,
                     file_overhead_bits=_file_overhead_bits(model, layers, quantized_ids, rest_bits))
    space = BitSpace(layers, decisions, cost, float_layers, owners)
    share = cost.num_quantized_weights / max(num_params, 1)
    reach = reachable_range(cost)
    log.info("prepared %d weights (%.1f%% of the parameters) as %d decision units; reachable: weight compression "
             "%.3gx..%.4gx, whole-model compression %.3gx..%.4gx", len(layers), 100 * share, cost.num_units,
             *reach["compression"], *reach["model_compression"])
    if granularity.kind != "layer" and not any(layer.grouped for layer in layers):
        log.warning("granularity %s: no weight has more than one structure (%s), so every weight takes one "
                    "bitwidth", granularity.text, "no attention projection was found" if granularity.kind == "head"
                    else "every weight has at most that many output channels")
    if share < 0.75:
        _warn_low_coverage(model, quantized_ids, share, num_params, cost.num_quantized_weights, set(float_units))
    if config.target is not None:
        budget_bits(config.target, cost)  # raises with the reachable range
    return space


def unprepare_(model: nn.Module) -> None:
    """Undo :func:`prepare_`: every layer computes with its float weights again (folded
    parametrizations stay folded)."""
    for m in unwrap_compiled(model).modules():
        if is_swapped(m):
            restore_class_(m)
