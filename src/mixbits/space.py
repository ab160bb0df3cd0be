"""Model surgery: turn any nn.Module into a searchable one, in place.

``prepare_(model, config)`` finds every weight tensor that :mod:`mixbits.targets`
declares (Conv, Linear, Embedding, MultiheadAttention, LSTM/GRU/RNN, Hugging Face
Conv1D) or that the user names, and gives each distinct tensor one
:class:`Decision`: logits over the candidate bitwidths. Every module holding the
tensor, under any name, has its class swapped for a subclass whose attribute
returns the mixed weight ``sum_b p_b Q_b(W)``, so the layer still runs ONE
convolution or matmul. Parameters stay in ``_parameters`` under their float
names: float checkpoints load unchanged and ``model.state_dict()`` has exactly
the float keys.

The decisions live in the returned :class:`BitSpace`, not in the model, so the
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
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .budget import budget_bits, reachable_range
from .cost import Bits, CostModel, LayerInfo
from .granularity import Granularity, parse_granularity
from .quant import (FLOAT_BITS, HALF_BITS, best_clip, channels_back, channels_first, check_bits, quantize_hard,
                    quantize_int_stack, weight_scale)
from .targets import (DECISIONS_ATTR, QUANTIZABLE_TYPES, channel_dim, is_swapped, quantized_attrs, restore_class_,
                      swap_class_)

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
        target: an optional size target (``"16x"``, ``"300KB"``, ``"1.5bits"``) checked against
            what the candidates can reach right in ``prepare_``.
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


class Decision(nn.Module):
    """Learnable choice of one bitwidth among ``candidates`` for one weight tensor.

    Args:
        candidates: candidate bitwidths, ascending.
        channel_dim: the weight's output-channel dimension, one scale per index (1 for a
            Hugging Face Conv1D's (in, out) weight, else 0).
        group_channels: output channels of each structure when the bits are chosen per
            structure (two or more entries); None for one choice for the whole tensor.

    The logits have shape (K,), or (G, K) with one row per structure; ``fixed_bits`` is an
    int, or a tuple of G ints for a decision with structures.
    """

    def __init__(self, candidates: tuple[int, ...], channel_dim: int = 0,
                 group_channels: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.candidates = tuple(candidates)
        self.channel_dim = int(channel_dim)
        groups = tuple(group_channels or ())
        self.groups = len(groups) if len(groups) > 1 else 1
        shape = (self.groups, len(self.candidates)) if self.groups > 1 else (len(self.candidates),)
        self.logits = nn.Parameter(torch.zeros(shape))  # (K,) or (G, K)
        # Budget price of each candidate, set by BitSpace.project_: probs = softmax((logits - shift) / T).
        self.register_buffer("shift", torch.zeros(shape))  # like logits
        if self.groups > 1:  # the structure of every output channel, (C,)
            self.register_buffer("channel_group", torch.repeat_interleave(
                torch.arange(self.groups), torch.tensor(groups)), persistent=False)
        self.temperature = 1.0
        self.gumbel = False
        self.fixed_bits: Bits | None = None
        if len(self.candidates) == 1:
            self.fixed_bits = self.candidates[0] if self.groups == 1 else (self.candidates[0],) * self.groups
        self._uniform = tuple(b for b in self.candidates if 2 <= b <= 8)
        # Clipping ratios of the uniform candidates, refreshed every `clip_refresh` mixed forwards.
        self.clip_refresh = 16
        self._clip: torch.Tensor | None = None
        self._clip_age = 0
        self._hard: tuple | None = None  # (key, quantized weight) at the fixed bits

    def reset_cache_(self) -> None:
        """Forget the cached clipping ratios (recomputed at the next mixed forward)."""
        self._clip = None
        self._clip_age = 0
        self._hard = None

    def _fixed_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``fake_quantize(w, fixed_bits)``, its grid search done once per weight version.

        The cache is keyed on the tensor's in-place version counter, so an optimiser step
        or a ``load_state_dict`` invalidates it and the result is always exact.
        """
        bits = self.fixed_bits
        if bits == FLOAT_BITS or (isinstance(bits, tuple) and set(bits) == {FLOAT_BITS}):
            return w
        key = (id(w), w._version, bits, w.device, w.dtype)
        if self._hard is None or self._hard[0] != key:
            if isinstance(bits, tuple):
                self._hard = (key, self._structured_hard(w, bits))
            else:
                self._hard = (key, quantize_hard(w, bits, self.channel_dim))
        return w + (self._hard[1] - w).detach()

    @torch.no_grad()
    def _structured_hard(self, w: torch.Tensor, bits: tuple[int, ...]) -> torch.Tensor:
        """The weight with every structure quantized at its own bits (scales are per channel, so
        quantizing the whole tensor at b and keeping the channels at b is exact)."""
        wd = channels_first(w.detach(), self.channel_dim)  # (C, ...)
        per_channel = torch.tensor(bits, device=w.device)[self.channel_group.to(w.device)]  # (C,)
        out = wd.clone()
        for b in sorted(set(bits)):
            rows = per_channel == b
            if b != FLOAT_BITS:
                out[rows] = quantize_hard(wd[rows], b)
        return channels_back(out, self.channel_dim)

    def probs(self) -> torch.Tensor:
        """Probabilities over the candidates, shape (K,) or (G, K); Gumbel-perturbed when enabled in training."""
        logits = self.logits - self.shift
        if self.gumbel and self.training:
            u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
            logits = logits - torch.log(-torch.log(u))
        return F.softmax(logits / self.temperature, dim=-1)

    def preference(self) -> torch.Tensor:
        """Log-probabilities at temperature 1 (what the budget solver maximises), shape (K,) or (G, K)."""
        return F.log_softmax(self.logits.detach().float(), dim=-1)

    def argmax_bits(self) -> Bits:
        """The most likely bits: an int, or one per structure."""
        idx = self.logits.detach().argmax(dim=-1)
        if self.groups == 1:
            return self.candidates[int(idx)]
        return tuple(self.candidates[int(i)] for i in idx)

    def mixed_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight a layer computes with: fixed bits, or the probability-weighted mixture."""
        if self.fixed_bits is not None:
            return self._fixed_weight(w)
        p = self.probs().to(w.dtype)  # (K,) or (G, K)
        # sum_k p_k Q_k(w) written as w + sum_k p_k (Q_k(w) - w): the straight-through
        # gradient to w is the identity and the gradient to p_k is Q_k(w) - w, which
        # equals Q_k(w) up to a constant that the softmax Jacobian cancels. The 32-bit
        # candidate adds nothing (Q_32(w) = w) and is skipped.
        wd = channels_first(w.detach(), self.channel_dim)  # output channels on dim 0
        parts = []  # quantized weights in ascending candidate order, 32 excluded
        if self.candidates[0] == 1:
            view = (-1,) + (1,) * (w.dim() - 1)
            s = weight_scale(wd, 1).view(view)
            parts.append(torch.where(wd >= 0, s, -s)[None])
        if self._uniform:
            if self._clip is None or self._clip_age >= self.clip_refresh or self._clip.device != w.device:
                self._clip = best_clip(wd, self._uniform)
                self._clip_age = 0
            self._clip_age += 1
            parts.append(quantize_int_stack(wd, self._uniform, self._clip))
        if HALF_BITS in self.candidates:
            parts.append(wd.half().to(w.dtype)[None])
        if not parts:
            return w
        deltas = (parts[0] if len(parts) == 1 else torch.cat(parts)) - wd  # (K', *wd.shape)
        k = deltas.shape[0]
        if self.groups == 1:
            mix = torch.tensordot(p[:k], deltas, dims=1)
        else:  # one mixture per output channel: coefficients (K', C, 1, ...)
            coef = p[self.channel_group.to(p.device), :k].t().reshape((k, -1) + (1,) * (w.dim() - 1))
            mix = (coef * deltas).sum(dim=0)
        return w + channels_back(mix, self.channel_dim)

    def extra_repr(self) -> str:
        dim = f", channel_dim={self.channel_dim}" if self.channel_dim else ""
        groups = f", structures={self.groups}" if self.groups > 1 else ""
        return f"candidates={self.candidates}, fixed_bits={self.fixed_bits}{dim}{groups}"


_DECISION_ATTR = DECISIONS_ATTR  # set on every module that computes with a quantized weight


def float_weight(module: nn.Module, attr: str = "weight") -> torch.Tensor:
    """The float Parameter ``attr`` of a layer, prepared or not."""
    return module._parameters[attr]


class BitSpace(nn.Module):
    """The decisions of a prepared model, with their cost model.

    Attributes:
        layers: decision units in model order (:class:`LayerInfo`).
        cost: the :class:`CostModel` of the prepared model.
        float_layers: [(name, type, num_params, reason)] of parametrised modules kept in float.
    """

    def __init__(self, layers: list[LayerInfo], decisions: list[Decision], cost: CostModel,
                 float_layers: list[tuple[str, str, int, str]],
                 owners: Mapping[str, tuple[nn.Module, str]] | None = None) -> None:
        super().__init__()
        self.layers = layers
        self.decision_list = nn.ModuleList(decisions)
        self.cost = cost
        self.float_layers = float_layers
        self._index = {layer.name: i for i, layer in enumerate(layers)}
        # (module, attribute) holding each decision's float Parameter; a plain dict, not submodules.
        self.__dict__["_owners"] = dict(owners or {})

    def float_weight(self, name: str) -> torch.Tensor:
        """The float Parameter that the decision ``name`` quantizes."""
        module, attr = self.__dict__["_owners"][name]
        return module._parameters[attr]

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def decision(self, name: str) -> Decision:
        return self.decision_list[self._index[name]]  # type: ignore[return-value]

    def items(self) -> Iterator[tuple[LayerInfo, Decision]]:
        return zip(self.layers, self.decision_list)  # type: ignore[return-value]

    def searchable(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.pinned]

    def probs(self) -> dict[str, torch.Tensor]:
        """{layer name: probabilities (K,) or (G, K)} with gradients, fixed layers one-hot."""
        out = {}
        for layer, d in self.items():
            if d.fixed_bits is not None:
                idx = [layer.candidates.index(b) for b in layer.expand(d.fixed_bits)]
                p = F.one_hot(torch.tensor(idx, device=d.logits.device), len(layer.candidates)).float()
                out[layer.name] = p.reshape(d.logits.shape)
            else:
                out[layer.name] = d.probs()
        return out

    @torch.no_grad()
    def project_(self, budget_bits: int) -> float:
        """Price the candidates so the expected size equals ``budget_bits`` exactly.

        Sets every free decision's ``shift`` to ``mu * cost`` (cost in units of the
        budget), with the scalar ``mu`` found by bisection so that
        ``sum_l sum_k softmax((a_l - mu c_l) / T)_k c_lk == budget``. ``mu`` is the
        Lagrange multiplier of the size constraint: positive when the logits alone
        would overspend, negative when they would underspend. The expected size is
        decreasing in ``mu``, so bisection is exact to float64 precision.

        Returns:
            mu.
        """
        free = [(layer, d) for layer, d in self.items() if d.fixed_bits is None]
        fixed = sum(layer.size_bits(d.fixed_bits) for layer, d in self.items() if d.fixed_bits is not None)
        target = float(budget_bits - fixed)
        if not free:
            return 0.0
        if target <= 0:
            raise ValueError(f"the pinned layers alone ({fixed} bits) exceed the budget of {budget_bits} bits")
        # One row per unit (a layer, or a structure of a layer with structures).
        k_max = max(len(layer.candidates) for layer, _ in free)
        rows = [layer.num_groups for layer, _ in free]
        a = np.full((sum(rows), k_max), -np.inf)  # (U, K) logits / T
        c = np.zeros((sum(rows), k_max))  # (U, K) sizes in units of the budget
        start = 0
        for (layer, d), g in zip(free, rows):
            k = len(layer.candidates)
            a[start:start + g, :k] = d.logits.detach().double().cpu().numpy().reshape(g, k) / d.temperature
            c[start:start + g, :k] = layer.unit_sizes() / target
            start += g
        nu = _solve_price(a, c)
        start = 0
        for (layer, d), g in zip(free, rows):
            k = len(d.candidates)
            shift = nu * d.temperature * c[start:start + g, :k]
            d.shift.copy_(torch.from_numpy(shift.reshape(d.shift.shape)).to(d.shift))
            start += g
        return nu * free[0][1].temperature

    def expected_quantized_bits(self) -> torch.Tensor:
        """Differentiable expected size of the quantized weights, in bits."""
        return self.cost.expected_quantized_bits(self.probs())

    def set_temperature_(self, temperature: float) -> None:
        for d in self.decision_list:
            d.temperature = float(temperature)

    def set_gumbel_(self, on: bool) -> None:
        for d in self.decision_list:
            d.gumbel = bool(on)

    def fix_(self, bits: Mapping[str, Bits]) -> None:
        """Fix every layer at the given bits (an int, or one per structure; an int applies to every
        structure): the model then computes with discrete bits."""
        for name, b in self.cost.normalize(bits).items():
            self.decision(name).fixed_bits = b

    def unfix_(self) -> None:
        """Return every unpinned layer to the mixed (searchable) forward."""
        for layer, d in self.items():
            d.fixed_bits = layer.candidates[0] if layer.pinned else None

    def fixed_bits(self) -> dict[str, Bits] | None:
        """The fixed assignment, or None if any layer is still mixed."""
        out = {}
        for layer, d in self.items():
            if d.fixed_bits is None:
                return None
            out[layer.name] = d.fixed_bits
        return out

    def argmax_bits(self) -> dict[str, Bits]:
        return {layer.name: d.argmax_bits() for layer, d in self.items()}

    def preferences(self) -> dict[str, dict[int, float]]:
        """{unit name: {bits: log-probability}}, the objective of the budget solver (units as in
        ``cost.cost_table()``: a layer, or each structure of a layer with structures)."""
        out = {}
        for layer, d in self.items():
            pref = d.preference().reshape(layer.num_groups, -1).tolist()
            for u, row in zip(layer.unit_names, pref):
                out[u] = dict(zip(layer.candidates, row))
        return out


def _expected_sizes(a: np.ndarray, c: np.ndarray, nus: np.ndarray) -> np.ndarray:
    """Expected size (units of the budget) at each price in ``nus``; a (L, K), c (L, K), nus (M,) -> (M,)."""
    z = a[None] - nus[:, None, None] * c[None]  # (M, L, K)
    z = z - z.max(axis=2, keepdims=True)
    e = np.exp(z)
    return ((e * c[None]).sum(axis=2) / e.sum(axis=2)).sum(axis=1)


def _size_and_slope(a: np.ndarray, c: np.ndarray, nu: float) -> tuple[float, float]:
    """Expected size (budget units) at price ``nu`` and its derivative, ``-sum_u Var_u(c)`` (<= 0)."""
    z = a - nu * c  # (U, K)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    m1 = (p * c).sum(axis=1)  # (U,)
    m2 = (p * c * c).sum(axis=1)
    return float(m1.sum()), -float((m2 - m1 * m1).sum())


def _solve_price(a: np.ndarray, c: np.ndarray) -> float:
    """The price nu with expected size == 1 (budget units): bracket, then safeguarded Newton.

    The expected size is non-increasing in nu, with derivative minus the summed variance of the
    sizes. The bracket grows fourfold from [-1, 1] until it holds the crossing (at most +-1e6,
    returned when the size stays above or below 1 there); Newton steps then shrink it, with a
    bisection step whenever Newton would leave the bracket, until it is 1e-12 wide (relative):
    a handful of evaluations of one (U, K) array each. Returns the upper end of the bracket:
    the side that does not overspend.
    """
    limit = 1e6
    lo, hi = -1.0, 1.0
    while _size_and_slope(a, c, hi)[0] > 1.0:  # the crossing lies above hi
        if hi >= limit:
            return limit
        lo, hi = hi, min(4.0 * hi, limit)
    while _size_and_slope(a, c, lo)[0] <= 1.0:  # lo is within the budget already: the crossing lies below it
        if lo <= -limit:
            return -limit
        lo, hi = max(4.0 * lo, -limit), lo
    nu = 0.5 * (lo + hi)
    for _ in range(200):
        tol = 1e-12 * max(1.0, abs(nu))
        size, slope = _size_and_slope(a, c, nu)
        if size > 1.0:
            lo = nu
        else:
            hi = nu
        if hi - lo <= 2 * tol:
            break
        newton = nu - (size - 1.0) / slope if slope < 0 else 0.5 * (lo + hi)
        if not lo < newton < hi:
            nu = 0.5 * (lo + hi)  # Newton would leave the bracket: bisect
        elif abs(newton - nu) > tol:
            nu = newton
        else:  # Newton has converged from one side: probe just across the root to close the bracket
            nu = min(max(newton + (tol if size > 1.0 else -tol), lo), hi)
            if nu in (lo, hi):
                nu = 0.5 * (lo + hi)
    return hi


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
    from .export.fileformat import LayerRecord, float_records, header_bytes_bound  # export imports this module

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


def prepare_(model: nn.Module, config: PrepareConfig | None = None) -> BitSpace:
    """Make ``model`` searchable in place and return its :class:`BitSpace`.

    Args:
        model: any nn.Module; the weights of its Conv1d/2d/3d, Linear, Embedding(Bag),
            MultiheadAttention, LSTM/GRU/RNN and Hugging Face Conv1D layers (and subclasses),
            plus ``config.params``, are prepared.
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
    if any(is_swapped(m) for m in model.modules()):
        raise ValueError("model is already prepared: call unprepare_(model) first or use a fresh model")
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
            "the model has nothing to quantize: no Conv, Linear, Embedding, MultiheadAttention, LSTM/GRU/RNN or "
            "Hugging Face Conv1D weight was found (or all were excluded); name other weights with params="
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
        float_layers.append((name, type(module).__name__, sum(p.numel() for p in own), why))
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
        log.warning("only %.1f%% of the parameters are quantized; %d stay float (largest: %s): whole-model "
                    "compression stays below %.2fx whatever the target", 100 * share, num_params - cost.num_quantized_weights,
                    ", ".join(f"{n} ({k}, {p})" for n, k, p, _ in sorted(float_layers, key=lambda f: -f[2])[:3]),
                    1 / max(1 - share, 1e-12))
    if config.target is not None:
        budget_bits(config.target, cost)  # raises with the reachable range
    return space


def unprepare_(model: nn.Module) -> None:
    """Undo :func:`prepare_`: every layer computes with its float weights again."""
    for m in model.modules():
        if is_swapped(m):
            restore_class_(m)
