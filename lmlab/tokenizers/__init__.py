"""Tokenizers; each module here registers one (``tokenizer=NAME``)."""

from lmlab.tokenizers.base import Tokenizer, TokenizerConfig

__all__ = ["Tokenizer", "TokenizerConfig"]
