"""Attention variants; each module here registers one (``attention=NAME``)."""

from lmlab.model.attention.base import Attention, AttentionConfig, KVCache

__all__ = ["Attention", "AttentionConfig", "KVCache"]
