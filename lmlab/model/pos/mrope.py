"""Qwen2-VL M-RoPE (S16; SPEC §8): three axes (time, row, column) on contiguous frequency sections.

Design choices:
- The D/2 RoPE-1D frequencies θ_k = base^(-2k/D) are split *contiguously*: the first ``sections[0]``
  pairs turn with the time coordinate, the next ``sections[1]`` with the row, the last ``sections[2]``
  with the column. Qwen2-VL uses [16, 24, 24] for D = 128; the default here scales that 2:3:3 ratio
  to the head dim (t = max(1, round(D/8)), h = (D/2 - t) // 2, w = the rest; D = 32 gives [4, 6, 6]).
- Layout ``half`` (rotate_half, dims k and k + D/2 form pair k) as in Qwen's code, so the sections
  cut contiguous blocks of both halves. ``layout=interleaved`` is allowed and differs only by a fixed
  permutation of q/k dims (SPEC §6).
- Text n sits at (n, n, n): all pairs turn by n·θ_k, so on plain text M-RoPE equals RoPE-1D with the
  same layout exactly, and RoPE-1D interleaved after permuting q/k dims (tests/test_pos_rotary.py).
- Placement (``lmlab.model.pos.assign``, scheme ``mrope``): S = L + 1, vision token (t, h, w) zero-based
  at (S+t, S+h, S+w), the next text at the largest id so far + 1. The default base is lmlab's 10000;
  Qwen2-VL checkpoints use ``base=1000000``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from lmlab.model.pos.rotary import RotaryBase, RotaryConfig, rotated_dim
from lmlab.registry import POS


def default_sections(n_pairs: int) -> list[int]:
    """Qwen2-VL's [16, 24, 24] (of 64 pairs) scaled to ``n_pairs``; sums to n_pairs."""
    t = max(1, round(n_pairs / 4))
    h = (n_pairs - t) // 2
    return [t, h, n_pairs - t - h]


@dataclass
class MRoPEConfig(RotaryConfig):
    name: str = "mrope"
    layout: Literal["interleaved", "half"] = "half"
    sections: Optional[list[int]] = None  # pairs per axis (t, h, w); None: scaled from [16, 24, 24]

    def check(self, run) -> list[str]:
        p = super().check(run)
        dim, key = rotated_dim(run)
        n_pairs = dim // 2
        if self.sections is None:
            if n_pairs < 3:
                p.append(
                    f"pos.name=mrope needs at least 3 frequency pairs (one per axis), but the rotated dim "
                    f"({key} = {dim}) has {n_pairs}"
                )
        elif len(self.sections) != 3 or any(s < 0 for s in self.sections):
            p.append(f"pos.sections={self.sections} must be three non-negative pair counts (t, h, w)")
        elif sum(self.sections) != n_pairs:
            p.append(
                f"pos.sections={self.sections} sums to {sum(self.sections)}, but the rotated dim "
                f"({key} = {dim}) has {n_pairs} frequency pairs (sections must sum to half of it)"
            )
        return p


@POS.register("mrope")
class MRoPE(RotaryBase):
    Config = MRoPEConfig
    n_axes = 3
    position_scheme = "mrope"

    def sections(self, n_pairs: int) -> list[int]:
        sec = self.cfg.sections if self.cfg.sections is not None else default_sections(n_pairs)
        if sum(sec) != n_pairs:
            raise ValueError(
                f"pos.sections={list(sec)} sums to {sum(sec)}, but the rotated dim has {n_pairs} pairs"
            )
        return list(sec)

    def pair_axes(self, n_pairs: int) -> list[int]:
        return [axis for axis, n in enumerate(self.sections(n_pairs)) for _ in range(n)]
