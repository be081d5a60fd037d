"""RoPE-Tie v1 (S14; SPEC §8): RoPE-2D whose image patches are spread so both gaps match.

Same rotation as ``rope2d`` (interleaved partition of the RoPE-1D frequencies, so plain text at (n, n)
is RoPE-1D exactly); only the placement differs (``lmlab.model.pos.assign``, scheme ``tie_v1``):
patch (i, j) of an h×w image after text position L sits at (L + i(w+1), L + j(h+1)), and the next
text token at L + (w+1)(h+1). The step from the last text token to the first patch, (w+1, h+1), equals
the step from the last patch to the next text token. Positions are integers, but the spacing inside an
image depends on its size (a crop changes it; tested against v2). S14 defines no 3-D form, so this
scheme is 2-D only. Wrap images in [IMG] ... [/IMG] text tokens so two images are never adjacent.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.model.pos.rope2d import InterleavedConfig, InterleavedRotary
from lmlab.registry import POS


@dataclass
class RoPETieConfig(InterleavedConfig):
    name: str = "rope_tie"

    allowed_axes = (2,)


@POS.register("rope_tie")
class RoPETie(InterleavedRotary):
    Config = RoPETieConfig
    position_scheme = "tie_v1"
