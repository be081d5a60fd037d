"""RoPE-2D (SPEC §7, §8): position (x, y) rotates disjoint sets of frequency pairs by x and by y.

Design choices:
- The frequency set is RoPE-1D's, θ_i = base^(-2i/D), *partitioned* between the axes by interleaving:
  pair i is driven by axis i % A (S15's canonical choice). Plain text sits at (n, n), so every pair
  turns by n·θ_i exactly as in RoPE-1D: the scheme reduces to RoPE-1D bit for bit (tested in float64).
  The S13 "half-split with the same θ on both halves" would not, since each frequency appears twice.
- ``n_axes`` is 2 (row, column) by default; 3 (time, row, column) serves video, pairs cycling t, h, w.
- Relativity: (R_p q)·(R_p' k) = q·(R_{p'-p} k), so logits depend only on (Δx, Δy) (tested).
- Images are placed by ``lmlab.model.pos.assign`` (scheme ``rope2d``, SPEC §15.4): patch (i, j) at
  (L+i, L+j), the next text at L + max(h, w) + 1. RoPE-Tie v1/v2 reuse this class with other placements.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.model.pos.rotary import RotaryBase, RotaryConfig, rotated_dim
from lmlab.registry import POS


@dataclass
class InterleavedConfig(RotaryConfig):
    n_axes: int = 2

    allowed_axes = (2, 3)  # class attribute, not a config key

    def check(self, run) -> list[str]:
        p = super().check(run)
        if self.n_axes not in self.allowed_axes:
            p.append(
                f"pos.n_axes={self.n_axes} is not supported by pos.name={self.name}"
                f" (choose {' or '.join(map(str, self.allowed_axes))})"
            )
        elif rotated_dim(run)[0] // 2 < self.n_axes:
            dim, key = rotated_dim(run)
            p.append(
                f"pos.name={self.name} needs at least one frequency pair per axis, but the rotated dim "
                f"({key} = {dim}) has {dim // 2} pair(s) for pos.n_axes={self.n_axes}"
            )
        return p


@dataclass
class RoPE2DConfig(InterleavedConfig):
    name: str = "rope2d"


class InterleavedRotary(RotaryBase):
    """Rotary scheme whose pair i is driven by axis i % n_axes."""

    Config = InterleavedConfig

    def __init__(self, cfg: InterleavedConfig, model_cfg):
        super().__init__(cfg, model_cfg)
        self.n_axes = cfg.n_axes

    def pair_axes(self, n_pairs: int) -> list[int]:
        return [i % self.n_axes for i in range(n_pairs)]


@POS.register("rope2d")
class RoPE2D(InterleavedRotary):
    Config = RoPE2DConfig
    position_scheme = "rope2d"
