"""RoPE-Tie-v2 / RoPE-TV (S15; SPEC §8): RoPE-2D with compatible, equivalent and symmetric placement.

Same rotation as ``rope2d`` (interleaved partition, plain text (n, n) == RoPE-1D exactly); the
placement is scheme ``tie_v2`` of ``lmlab.model.pos.assign``: for an h×w image after text position L,
β = (L + (wh-h)/2, L + (wh-w)/2), patch (i, j) at (β1 + i, β2 + j) and the next text at L + wh + 1
(the image "costs" wh tokens). Neighbouring patches differ by exactly (1, 0) or (0, 1), so a crop keeps
its spacing; the gaps text -> first patch and last patch -> text are equal. Positions are half-integers
in general: they stay floats end to end (an int cast silently breaks the scheme; ``learned`` cannot
serve it). ``n_axes = 3`` gives S15's video form, β_k = L + (thw - size_k)/2 on axes (t, h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.model.pos.rope2d import InterleavedConfig, InterleavedRotary
from lmlab.registry import POS


@dataclass
class RoPETieV2Config(InterleavedConfig):
    name: str = "rope_tie_v2"


@POS.register("rope_tie_v2")
class RoPETieV2(InterleavedRotary):
    Config = RoPETieV2Config
    position_scheme = "tie_v2"
