"""Deprecated alias kept for one release: ``lmlab.train.checkpoint.load_checkpoint`` is the loader."""

from __future__ import annotations


def load_checkpoint(path: str, map_location: str = "cpu"):
    """-> (model in eval mode, tokenizer or None, RunConfig), through ``lmlab.train.checkpoint``."""
    from lmlab.train.checkpoint import load_checkpoint as load

    loaded = load(path, map_location)
    return loaded.model, loaded.tokenizer, loaded.run
