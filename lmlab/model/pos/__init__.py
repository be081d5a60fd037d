"""Position encodings; each module here registers one scheme (``pos=NAME``)."""

from lmlab.model.pos.base import PosEncoding

__all__ = ["PosEncoding"]
