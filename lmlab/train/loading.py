"""Load a trained model back from a checkpoint: the checkpoint embeds its resolved config and its
tokenizer, so nothing else (corpus, cache) is needed."""

from __future__ import annotations

import pickle

import torch

from lmlab.config import ConfigError, RunConfig, from_dict, load_variants
from lmlab.model.transformer import build_model


def load_checkpoint(path: str, map_location: str = "cpu"):
    """-> (model in eval mode, tokenizer, RunConfig); tokenizer is None for an image-text run."""
    load_variants()
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    if (ckpt.get("lmlab") or {}).get("task") == "image_text":  # the digits lab: no tokenizer
        from lmlab.multimodal.task import load_image_text

        model, run = load_image_text(path)
        return model, None, run
    state = ckpt.get("lmlab")
    if state is None or "config" not in state:
        raise ValueError(f"{path} is not an lmlab checkpoint (no embedded config)")
    problems: list[str] = []
    run = from_dict(RunConfig, state["config"], "", problems)
    if problems:
        raise ConfigError(problems)
    tokenizer = pickle.loads(state["tokenizer"])
    model = build_model(run, tokenizer.vocab_size)
    weights = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    weights = {k.replace("_orig_mod.", ""): v for k, v in weights.items()}
    model.load_state_dict(weights)
    model.eval()
    return model, tokenizer, run
