"""The decisions of a prepared model and their cost model: what the search and every method act on.

:class:`BitSpace` holds one :class:`~mixbits.mixture.Decision` per distinct weight tensor
(returned by :func:`mixbits.space.prepare_`), fixes and unfixes bits, projects the
probabilities onto the budget (:mod:`mixbits.price`) and reports preferences for the
exact budget solver.
"""

from __future__ import annotations

from typing import Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .cost import Bits, CostModel, LayerInfo
from .mixture import Decision
from .price import solve_price

__all__ = ["BitSpace"]


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
        nu = solve_price(a, c)
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
