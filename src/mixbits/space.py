"""Model surgery: turn any nn.Module into a searchable one, in place.

``prepare_(model, config)`` finds every Conv1d/Conv2d/Conv3d and Linear (grouped
and depthwise convolutions included) by fully qualified name and gives each
weight tensor one :class:`Decision`: logits over the candidate bitwidths. The
layer's class is swapped for a subclass whose ``weight`` attribute returns the
mixed weight ``sum_b p_b Q_b(W)``, so the layer still runs ONE convolution or
matmul and any forward that reads ``self.weight`` is covered. Parameters stay in
``_parameters`` under their float names: float checkpoints load unchanged and
``model.state_dict()`` has exactly the float keys.

The decisions live in the returned :class:`BitSpace`, not in the model, so the
weights (``model.parameters()``) and the logits (``space.parameters()``) are two
plain parameter sets for the two optimisers of the search.

A module used in two places, or two modules sharing one weight Parameter, get a
single decision and are counted once. The unit of decision is a whole weight
tensor today; a unit is addressed by name and sized by :class:`LayerInfo`, so a
group of output channels can become a unit without changing the callers.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cost import CostModel, LayerInfo
from .quant import FLOAT_BITS, HALF_BITS, best_clip, check_bits, fake_quantize, quantize_int_stack, weight_scale

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
QUANTIZABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True, kw_only=True)
class PrepareConfig:
    """What to quantize and with which candidates.

    Attributes:
        candidates: bitwidths the search chooses from, any subset of 1..8, 16, 32.
        include: glob patterns of layer names to quantize (default: all).
        exclude: glob patterns of layer names to keep in float.
        pins: {glob pattern: bits}; matching layers are fixed at those bits.
    """

    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    pins: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cands = tuple(sorted(set(int(b) for b in self.candidates)))
        if not cands:
            raise ValueError("candidates is empty: give at least one bitwidth, e.g. 1,2,4,8,16,32")
        for b in cands:
            check_bits(b)
        object.__setattr__(self, "candidates", cands)
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
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
    """

    def __init__(self, candidates: tuple[int, ...]) -> None:
        super().__init__()
        self.candidates = tuple(candidates)
        self.logits = nn.Parameter(torch.zeros(len(self.candidates)))  # (K,)
        # Budget price of each candidate, set by BitSpace.project_: probs = softmax((logits - shift) / T).
        self.register_buffer("shift", torch.zeros(len(self.candidates)))  # (K,)
        self.temperature = 1.0
        self.gumbel = False
        self.fixed_bits: int | None = self.candidates[0] if len(self.candidates) == 1 else None
        self._uniform = tuple(b for b in self.candidates if 2 <= b <= 8)
        # Clipping ratios of the uniform candidates, refreshed every `clip_refresh` mixed forwards.
        self.clip_refresh = 16
        self._clip: torch.Tensor | None = None
        self._clip_age = 0

    def reset_cache_(self) -> None:
        """Forget the cached clipping ratios (recomputed at the next mixed forward)."""
        self._clip = None
        self._clip_age = 0

    def probs(self) -> torch.Tensor:
        """Probabilities over the candidates, shape (K,); Gumbel-perturbed when enabled in training."""
        logits = self.logits - self.shift
        if self.gumbel and self.training:
            u = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
            logits = logits - torch.log(-torch.log(u))
        return F.softmax(logits / self.temperature, dim=-1)

    def preference(self) -> torch.Tensor:
        """Log-probabilities at temperature 1 (what the budget solver maximises), shape (K,)."""
        return F.log_softmax(self.logits.detach().float(), dim=-1)

    def argmax_bits(self) -> int:
        return self.candidates[int(self.logits.detach().argmax())]

    def mixed_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight a layer computes with: fixed bits, or the probability-weighted mixture."""
        if self.fixed_bits is not None:
            return fake_quantize(w, self.fixed_bits)
        p = self.probs().to(w.dtype)  # (K,)
        # sum_k p_k Q_k(w) written as w + sum_k p_k (Q_k(w) - w): the straight-through
        # gradient to w is the identity and the gradient to p_k is Q_k(w) - w, which
        # equals Q_k(w) up to a constant that the softmax Jacobian cancels. The 32-bit
        # candidate adds nothing (Q_32(w) = w) and is skipped.
        wd = w.detach()
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
        deltas = (parts[0] if len(parts) == 1 else torch.cat(parts)) - wd  # (K', *w.shape)
        return w + torch.tensordot(p[: deltas.shape[0]], deltas, dims=1)

    def extra_repr(self) -> str:
        return f"candidates={self.candidates}, fixed_bits={self.fixed_bits}"


_DECISION_ATTR = "_mixbits_decision"
_ORIG_CLASS_ATTR = "_mixbits_float_class"
_MIXED_CLASSES: dict[type, type] = {}


def _weight_property(self: nn.Module) -> torch.Tensor:
    w = self._parameters["weight"]
    return getattr(self, _DECISION_ATTR).mixed_weight(w)


def _mixed_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``weight`` attribute is the quantized/mixed weight."""
    if cls not in _MIXED_CLASSES:
        _MIXED_CLASSES[cls] = type(f"Mixed{cls.__name__}", (cls,), {"weight": property(_weight_property)})
    return _MIXED_CLASSES[cls]


def float_weight(module: nn.Module) -> torch.Tensor:
    """The float weight Parameter of a layer, prepared or not."""
    return module._parameters["weight"]


class BitSpace(nn.Module):
    """The decisions of a prepared model, with their cost model.

    Attributes:
        layers: decision units in model order (:class:`LayerInfo`).
        cost: the :class:`CostModel` of the prepared model.
        float_layers: [(name, type, num_params, reason)] of parametrised modules kept in float.
    """

    def __init__(self, layers: list[LayerInfo], decisions: list[Decision], cost: CostModel,
                 float_layers: list[tuple[str, str, int, str]]) -> None:
        super().__init__()
        self.layers = layers
        self.decision_list = nn.ModuleList(decisions)
        self.cost = cost
        self.float_layers = float_layers
        self._index = {layer.name: i for i, layer in enumerate(layers)}

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
        """{layer name: probabilities (K,)} with gradients, pinned layers one-hot."""
        out = {}
        for layer, d in self.items():
            if d.fixed_bits is not None:
                p = torch.zeros(len(layer.candidates), device=d.logits.device)
                p[layer.candidates.index(d.fixed_bits)] = 1.0
                out[layer.name] = p
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
        k_max = max(len(layer.candidates) for layer, _ in free)
        a = np.full((len(free), k_max), -np.inf)  # (L, K) logits / T
        c = np.zeros((len(free), k_max))  # (L, K) sizes in units of the budget
        for i, (layer, d) in enumerate(free):
            k = len(layer.candidates)
            a[i, :k] = d.logits.detach().double().cpu().numpy() / d.temperature
            c[i, :k] = np.array([layer.size_bits(b) for b in layer.candidates], dtype=np.float64) / target
        nu = _solve_price(a, c)
        for i, (_, d) in enumerate(free):
            k = len(d.candidates)
            d.shift.copy_(torch.from_numpy(nu * d.temperature * c[i, :k]).to(d.shift))
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

    def fix_(self, bits: Mapping[str, int]) -> None:
        """Fix every layer at the given bits: the model then computes with discrete bits."""
        self.cost._check(bits)
        for layer, d in self.items():
            b = int(bits[layer.name])
            check_bits(b)
            d.fixed_bits = b

    def unfix_(self) -> None:
        """Return every unpinned layer to the mixed (searchable) forward."""
        for layer, d in self.items():
            d.fixed_bits = layer.candidates[0] if layer.pinned else None

    def fixed_bits(self) -> dict[str, int] | None:
        """The fixed assignment, or None if any layer is still mixed."""
        out = {}
        for layer, d in self.items():
            if d.fixed_bits is None:
                return None
            out[layer.name] = d.fixed_bits
        return out

    def argmax_bits(self) -> dict[str, int]:
        return {layer.name: d.argmax_bits() for layer, d in self.items()}

    def preferences(self) -> dict[str, dict[int, float]]:
        """{layer name: {bits: log-probability}}, the objective of the budget solver."""
        return {
            layer.name: {b: float(v) for b, v in zip(layer.candidates, d.preference())}
            for layer, d in self.items()
        }


def _expected_sizes(a: np.ndarray, c: np.ndarray, nus: np.ndarray) -> np.ndarray:
    """Expected size (units of the budget) at each price in ``nus``; a (L, K), c (L, K), nus (M,) -> (M,)."""
    z = a[None] - nus[:, None, None] * c[None]  # (M, L, K)
    z = z - z.max(axis=2, keepdims=True)
    e = np.exp(z)
    return ((e * c[None]).sum(axis=2) / e.sum(axis=2)).sum(axis=1)


def _solve_price(a: np.ndarray, c: np.ndarray) -> float:
    """The price nu with expected size == 1 (budget units), by vectorised bracketing.

    The expected size is non-increasing in nu. Each round evaluates 129 prices across the
    current bracket and keeps the sub-interval where the size crosses 1; the first round
    spans +-1e6 on a sinh-spaced grid, so both tiny and huge prices are resolved.
    Returns the upper end of the bracket: the side that does not overspend.
    """
    nus = np.sinh(np.linspace(-np.arcsinh(1e6), np.arcsinh(1e6), 257))
    for _ in range(6):
        e = _expected_sizes(a, c, nus)
        above = e > 1.0
        if above.all():
            return float(nus[-1])
        if not above.any():
            return float(nus[0])
        j = int(np.argmin(above))  # first price at which the size is within budget
        lo, hi = nus[j - 1], nus[j]
        if hi - lo < 1e-12 * max(1.0, abs(hi)):
            break
        nus = np.linspace(lo, hi, 129)
    return float(nus[j])


def _matches(name: str, patterns: tuple[str, ...] | list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


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


def prepare_(model: nn.Module, config: PrepareConfig | None = None) -> BitSpace:
    """Make ``model`` searchable in place and return its :class:`BitSpace`.

    Args:
        model: any nn.Module; its Conv1d/2d/3d and Linear layers (and subclasses) are prepared.
        config: candidates, include/exclude patterns and pins.

    Returns:
        the BitSpace holding one Decision per distinct weight tensor.

    Raises:
        ValueError: a pin or exclude pattern that matches no layer, a model already
            prepared, or a model with nothing to quantize.
    """
    config = config or PrepareConfig()
    if any(hasattr(m, _DECISION_ATTR) for m in model.modules()):
        raise ValueError("model is already prepared: call unprepare_(model) first or use a fresh model")
    named = list(model.named_modules(remove_duplicate=False))
    all_candidates = [n for n, m in named if isinstance(m, QUANTIZABLE_TYPES) and n]
    if not all_candidates and isinstance(model, QUANTIZABLE_TYPES):
        all_candidates = [""]
    for pattern in list(config.pins) + list(config.exclude):
        if not any(fnmatch.fnmatchcase(n, pattern) for n in all_candidates):
            raise ValueError(
                f"pattern {pattern!r} matches no quantizable layer; the quantizable layers are: "
                + ", ".join(all_candidates[:40])
            )

    # Group every quantizable occurrence by weight Parameter: a shared module or a tied
    # weight is one decision.
    by_weight: dict[int, list[tuple[str, nn.Module]]] = {}
    float_layers: list[tuple[str, str, int, str]] = []
    seen_modules: set[int] = set()
    for name, module in named:
        if isinstance(module, QUANTIZABLE_TYPES):
            w = module._parameters.get("weight")
            if w is None:
                continue
            if isinstance(w, nn.parameter.UninitializedParameter):
                raise ValueError(f"layer {name!r} is lazy and not initialised yet: run one forward pass before prepare_")
            if not _matches(name, config.include) or _matches(name, config.exclude):
                if id(module) not in seen_modules:
                    float_layers.append((name, type(module).__name__, sum(p.numel() for p in module.parameters(recurse=False)), "excluded"))
                    seen_modules.add(id(module))
                continue
            by_weight.setdefault(id(w), []).append((name, module))
        elif id(module) not in seen_modules and any(True for _ in module.parameters(recurse=False)):
            seen_modules.add(id(module))
            float_layers.append((name, type(module).__name__, sum(p.numel() for p in module.parameters(recurse=False)), "type not quantized"))

    if not by_weight:
        raise ValueError(
            "the model has nothing to quantize: no Conv1d/Conv2d/Conv3d/Linear layer was found "
            "(or all were excluded); mixbits quantizes the weights of these layer types"
        )

    layers: list[LayerInfo] = []
    decisions: list[Decision] = []
    for uses in by_weight.values():
        name, module = uses[0]
        aliases = tuple(dict.fromkeys(n for n, _ in uses[1:] if n != name))
        pin = None
        for n, _ in uses:
            for pattern, bits in config.pins.items():
                if fnmatch.fnmatchcase(n, pattern):
                    pin = bits
        cands = (pin,) if pin is not None else config.candidates
        w = module._parameters["weight"]
        info = LayerInfo(name=name, aliases=aliases, kind=type(module).__name__, shape=tuple(w.shape),
                         candidates=cands, pinned=pin is not None)
        decision = Decision(cands).to(w.device)
        layers.append(info)
        decisions.append(decision)
        for _, m in uses:
            if not hasattr(m, _DECISION_ATTR):
                object.__setattr__(m, _DECISION_ATTR, decision)
                object.__setattr__(m, _ORIG_CLASS_ATTR, type(m))
                m.__class__ = _mixed_class(type(m))

    quantized_ids = {id(m._parameters["weight"]) for uses in by_weight.values() for _, m in uses}
    cost = CostModel(layers, _float_rest_bits(model, quantized_ids))
    return BitSpace(layers, decisions, cost, float_layers)


def unprepare_(model: nn.Module) -> None:
    """Undo :func:`prepare_`: every layer computes with its float weight again."""
    for m in model.modules():
        if hasattr(m, _DECISION_ATTR):
            m.__class__ = getattr(m, _ORIG_CLASS_ATTR)
            del m.__dict__[_DECISION_ATTR]
            del m.__dict__[_ORIG_CLASS_ATTR]
