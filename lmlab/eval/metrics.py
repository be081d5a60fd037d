"""Metrics that compare fairly across tokenizers.

Bits per byte = (total nats the model assigns to the target tokens) / (UTF-8 bytes those tokens
stand for) / ln 2. Special tokens (EOS between documents) stand for 0 bytes: their nats count, so a
model pays for predicting document ends, as every tokenizer places them at the same points.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def nats_and_bytes(logits: torch.Tensor, targets: torch.Tensor, bytes_len: torch.Tensor) -> tuple[float, int, int]:
    """logits (B, T, V), targets (B, T), bytes_len (V,) -> (total nats, tokens, bytes)."""
    nats = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
    return nats.item(), targets.numel(), int(bytes_len[targets].sum())


def bits_per_byte(nats: float, n_bytes: int) -> float:
    return nats / max(n_bytes, 1) / math.log(2)
