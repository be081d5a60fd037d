"""Helpers shared by the lattice tokenizers (``unigram``, ``bytepiece``): text clean-up and mode switching."""

from __future__ import annotations

import dataclasses
from typing import Optional

from lmlab.tokenizers.lattice import MODES


def fix_surrogates(text: str) -> str:
    """Lone surrogates -> U+FFFD (surrogate pairs are joined); other text is returned as is."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def with_mode(tok, mode: Optional[str] = None, alpha: Optional[float] = None):
    """A copy of a lattice tokenizer (``cfg.mode``, ``cfg.alpha``) that segments with another mode
    and/or alpha; it shares the model (no reload)."""
    cfg = dataclasses.replace(tok.cfg, mode=mode or tok.cfg.mode,
                              alpha=tok.cfg.alpha if alpha is None else float(alpha))
    if cfg.mode not in MODES:
        raise ValueError(f"mode={cfg.mode!r} is not one of {', '.join(MODES)}")
    if cfg.alpha < 0:
        raise ValueError(f"alpha={cfg.alpha} must be >= 0")
    new = object.__new__(type(tok))
    new.__dict__.update(tok.__dict__)
    new.cfg, new.sampling = cfg, cfg.mode != "viterbi"
    return new
