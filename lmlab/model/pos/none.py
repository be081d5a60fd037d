"""No position encoding: the causal mask alone carries order (a NoPE baseline)."""

from lmlab.model.pos.base import PosEncoding
from lmlab.registry import POS


@POS.register("none")
class NoPos(PosEncoding):
    pass
