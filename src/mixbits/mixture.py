"""The candidate mixture: one learnable choice of bitwidth for one weight tensor.

A :class:`Decision` holds logits over the candidate bitwidths (one row per structure
when bits are chosen per structure) and computes the weight a layer runs with: the
quantized weight at fixed bits, or the probability-weighted mixture
``sum_b p_b Q_b(W)`` while the search is on, or, with ``hard`` set, ONE sampled candidate
per forward (straight-through gradient to the logits: the loss is always that of a real
discrete assignment). Pure per-tensor arithmetic lives in
:mod:`mixbits.quant`; model surgery in :mod:`mixbits.space`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cost import Bits
from .quant import (FLOAT_BITS, HALF_BITS, best_clip, channels_back, channels_first, quantize_hard,
                    quantize_int_stack, weight_scale)

__all__ = ["Decision"]


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
        # Hard forward: one candidate (the argmax of the, Gumbel-perturbed when enabled, probabilities)
        # per forward, the straight-through gradient of the softmax to the logits.
        self.hard = False
        # Interpolated forward (the ``fracbits`` method): a real position r (a 0-dim tensor) in
        # [0, K-1] over the candidates; the weight is (1-f) Q_floor + f Q_ceil with f = frac(r).
        self.position: torch.Tensor | None = None
        self.fixed_bits: Bits | None = None
        if len(self.candidates) == 1:
            self.fixed_bits = self.candidates[0] if self.groups == 1 else (self.candidates[0],) * self.groups
        self._uniform = tuple(b for b in self.candidates if 2 <= b <= 8)
        # Clipping ratios of the uniform candidates, refreshed every `clip_refresh` mixed forwards.
        self.clip_refresh = 16
        self._clip: torch.Tensor | None = None
        self._clip_age = 0
        self._hard: dict = {}  # {bits: (key, quantized weight)}, one entry per fixed bits used
        self._stack: tuple | None = None  # (key, every candidate's quantized weight), for the hard forward

    def reset_cache_(self) -> None:
        """Forget the cached clipping ratios (recomputed at the next mixed forward)."""
        self._clip = None
        self._clip_age = 0
        self._hard = {}
        self._stack = None

    def _fixed_weight(self, w: torch.Tensor) -> torch.Tensor:
        """``fake_quantize(w, fixed_bits)``, its grid search done once per weight version.

        The cache is keyed on the tensor's in-place version counter, so an optimiser step
        or a ``load_state_dict`` invalidates it and the result is always exact.
        """
        bits = self.fixed_bits
        if bits == FLOAT_BITS or (isinstance(bits, tuple) and set(bits) == {FLOAT_BITS}):
            return w
        return w + (self._cached_hard(w, bits) - w).detach()

    def _cached_hard(self, w: torch.Tensor, bits: Bits) -> torch.Tensor:
        """The quantized weight at ``bits``, cached per weight version (one entry per bits)."""
        key = (id(w), w._version, w.device, w.dtype)
        cached = self._hard.get(bits)
        if cached is None or cached[0] != key:
            if isinstance(bits, tuple):
                cached = (key, self._structured_hard(w, bits))
            else:
                cached = (key, quantize_hard(w, bits, self.channel_dim))
            self._hard[bits] = cached
        return cached[1]

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

    def sample(self) -> torch.Tensor:
        """A one-hot choice (the argmax of :meth:`probs`) with the straight-through gradient of the
        probabilities, shape (K,) or (G, K). With ``gumbel`` in training it is a draw from the
        softmax of the priced logits (the Gumbel-max trick)."""
        p = self.probs()
        y = F.one_hot(p.argmax(dim=-1), p.shape[-1]).to(p.dtype)
        return y + p - p.detach()

    def _candidate_stack(self, w: torch.Tensor) -> torch.Tensor:
        """Every candidate's quantized weight minus ``w``, (K', *w.shape) with the 32-bit candidate
        left out, exactly as the fixed forward computes them; cached per weight version (the hard
        search keeps its weights frozen, so this is computed once)."""
        key = (id(w), w._version, w.device, w.dtype)
        if self._stack is None or self._stack[0] != key:
            wd = w.detach()
            parts = [quantize_hard(wd, b, self.channel_dim) - wd for b in self.candidates if b != FLOAT_BITS]
            self._stack = (key, torch.stack(parts) if parts else wd.new_zeros((0,) + tuple(wd.shape)))
        return self._stack[1]

    def _hard_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The weight of one sampled candidate, with the straight-through gradient to the logits."""
        y = self.sample().to(w.dtype)  # (K,) or (G, K)
        deltas = self._candidate_stack(w)  # (K', *w.shape), candidates in order, 32 last and left out
        k = deltas.shape[0]
        if self.groups == 1:
            return w + torch.tensordot(y[:k], deltas, dims=1)
        d = channels_first(deltas.movedim(0, -1), self.channel_dim)  # (C, ..., K')
        coef = y[self.channel_group.to(y.device), :k]  # (C, K')
        mix = (d * coef.reshape((coef.shape[0],) + (1,) * (d.dim() - 2) + (k,))).sum(dim=-1)
        return w + channels_back(mix, self.channel_dim)

    def interpolated_weight(self, w: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """The weight between the two candidates nearest a real position, ``(1 - f) Q_lo(w) + f Q_hi(w)``.

        Args:
            w: the float weight.
            position: a 0-dim tensor r in [0, K-1] over the candidates (ascending); lo = floor(r)
                (K-2 at r = K-1), hi = lo + 1, f = r - lo.

        Returns:
            The weight, with the gradient of f to ``position`` (``Q_hi - Q_lo``) and the identity
            (straight-through) to ``w``. Only the two candidates lo and hi are quantized, each
            cached per weight version (:meth:`_cached_hard`): a forward costs at most two
            quantizers per layer, none once the frozen weight's two are cached.

        Raises:
            ValueError: the decision has structures, or fewer than two candidates.
        """
        if self.groups > 1 or len(self.candidates) < 2:
            raise ValueError("an interpolated position needs one decision per tensor and two or more candidates")
        k = len(self.candidates)
        r = position.clamp(0.0, k - 1.0)
        lo = min(int(r.detach().floor()), k - 2)
        f = (r - lo).to(w.dtype)
        q_lo = self._cached_hard(w, self.candidates[lo]).detach()
        q_hi = self._cached_hard(w, self.candidates[lo + 1]).detach()
        return w + (q_lo - w.detach()) + f * (q_hi - q_lo)

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
        if self.position is not None:
            return self.interpolated_weight(w, self.position)
        if self.hard:
            return self._hard_weight(w)
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
            # outside a compiled graph (as the fixed weight): eager rounding, and the refresh counter
            # would otherwise recompile the graph at every call
            parts.append(self._uniform_stack(wd))
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

    def _uniform_stack(self, wd: torch.Tensor) -> torch.Tensor:
        """The uniform candidates' quantized weights (K', *wd.shape), clipping ratios refreshed now and then."""
        if self._clip is None or self._clip_age >= self.clip_refresh or self._clip.device != wd.device:
            self._clip = best_clip(wd, self._uniform)
            self._clip_age = 0
        self._clip_age += 1
        return quantize_int_stack(wd, self._uniform, self._clip)

    def extra_repr(self) -> str:
        dim = f", channel_dim={self.channel_dim}" if self.channel_dim else ""
        groups = f", structures={self.groups}" if self.groups > 1 else ""
        return f"candidates={self.candidates}, fixed_bits={self.fixed_bits}{dim}{groups}"


# torch.compile runs the mixed weight outside its graph (see ``mixed_weight_outside_graph``); torch imports
# its compiler only when this is first called.
_outside_graph = torch._disable_dynamo(Decision.mixed_weight)


def mixed_weight_outside_graph(decision: Decision, w: torch.Tensor) -> torch.Tensor:
    """``decision.mixed_weight(w)``, computed eagerly when called from a graph that torch.compile traces.

    Eager, because inductor's fused division and rounding differ from eager at rounding boundaries (the
    exported file would not hold the weights the model ran with), the graph cannot see the version
    counter that keys the quantized-weight cache, and tracing the Python state (temperature, fixed bits,
    refresh counters) would recompile the graph whenever it changes. The graph breaks around this call;
    gradients flow through it as usual.
    """
    return _outside_graph(decision, w) if torch.compiler.is_compiling() else decision.mixed_weight(w)
