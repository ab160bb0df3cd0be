"""Granularity: how finely bitwidths are chosen inside one weight tensor (torch-free).

* ``layer``: one bitwidth per weight tensor (the default);
* ``channel``: one bitwidth per output channel (per row of scales);
* ``group:N``: one per run of N consecutive output channels (the last run may be shorter);
* ``head``: one per attention head of the attention projections (MultiheadAttention's
  ``in_proj_weight`` and ``q/k/v_proj_weight``, and Conv/Linear/Conv1D children of a module
  with an integer ``head_dim``); every other weight keeps one bitwidth.

A structure is always a run of whole output channels, because scales are per output
channel: a channel's codes, scale and bits stay together in the file.
"""

from __future__ import annotations

import re

__all__ = ["Granularity", "parse_granularity", "structure_channels", "Structures", "GRANULARITY_HELP"]

GRANULARITY_HELP = "write layer, channel, group:N (N output channels per structure, e.g. group:8) or head"
_GROUP = re.compile(r"^group:([0-9]+)$")


class Granularity(tuple):
    """(kind, channels per structure): ("layer", 0), ("channel", 1), ("group", N) or ("head", 0)."""

    @property
    def kind(self) -> str:
        return self[0]

    @property
    def size(self) -> int:
        return self[1]

    @property
    def text(self) -> str:
        return f"group:{self[1]}" if self[0] == "group" else self[0]


def parse_granularity(text: str) -> Granularity:
    """Parse ``"layer"``, ``"channel"``, ``"group:N"`` or ``"head"``.

    Raises:
        ValueError: anything else, or a group of zero channels.
    """
    s = str(text).strip().lower()
    if s == "layer":
        return Granularity(("layer", 0))
    if s == "channel":
        return Granularity(("channel", 1))
    if s == "head":
        return Granularity(("head", 0))
    m = _GROUP.match(s)
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ValueError(f"granularity {text!r}: a group needs at least one channel; {GRANULARITY_HELP}")
        return Granularity(("channel", 1)) if n == 1 else Granularity(("group", n))
    raise ValueError(f"unknown granularity {text!r}: {GRANULARITY_HELP}")


def structure_channels(channels: int, group_size: int) -> tuple[int, ...]:
    """Output channels of each structure of a weight with ``channels`` output channels: runs of
    ``group_size`` (the last one possibly shorter), or one structure when ``group_size`` is 0."""
    if not group_size:
        return (channels,)
    return tuple(min(group_size, channels - lo) for lo in range(0, channels, group_size))


class Structures:
    """The structures of a weight, for a class with ``name``, ``shape``, ``channel_dim`` and
    ``group_size`` (the cost model's ``LayerInfo`` and the file's ``LayerRecord``)."""

    def check_structures(self) -> None:
        """Raise ValueError for a channel dimension outside the shape or a group size outside 0..C-1."""
        if not 0 <= self.channel_dim < len(self.shape):
            raise ValueError(f"layer {self.name!r}: channel_dim {self.channel_dim} is not a dimension of shape "
                             f"{self.shape}")
        g, c = self.group_size, self.shape[self.channel_dim]
        if isinstance(g, bool) or not isinstance(g, int) or g < 0 or (g and g >= c):
            raise ValueError(f"layer {self.name!r}: group_size {g!r} must be 0 (one bitwidth) or below its {c} "
                             f"channels")

    @property
    def num_channels(self) -> int:
        """Output channels (along ``channel_dim``): one float16 scale each at 1..8 bits."""
        return self.shape[self.channel_dim]

    @property
    def group_channels(self) -> tuple[int, ...]:
        """Output channels of each structure, shape (num_groups,)."""
        return structure_channels(self.num_channels, self.group_size)

    @property
    def num_groups(self) -> int:
        """Structures with their own bitwidth (1 when the whole weight takes one)."""
        return len(self.group_channels)

    @property
    def grouped(self) -> bool:
        """Whether the weight has bits per structure (two or more structures)."""
        return self.num_groups > 1
