"""RoPE-1D (SPEC §6): q ↦ R_m q, k ↦ R_n k, so logits depend only on n - m."""

from lmlab.model.pos.rotary import RotaryBase
from lmlab.registry import POS


@POS.register("rope")
class RoPE(RotaryBase):
    n_axes = 1
