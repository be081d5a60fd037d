"""Learned absolute positions (GPT-2): a table of ``max_len`` vectors added to token embeddings.

Positions must be integers in [0, max_len); float positions are truncated, so schemes that need
half-integers (RoPE-Tie-v2) must not be combined with this table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lmlab.model.pos.base import PosConfig, PosEncoding
from lmlab.registry import POS


@dataclass
class LearnedConfig(PosConfig):
    name: str = "learned"
    max_len: Optional[int] = None  # default model.seq_len

    def check(self, run) -> list[str]:
        if self.max_len is not None and self.max_len < run.model.seq_len:
            return [f"pos.max_len={self.max_len} is shorter than model.seq_len={run.model.seq_len}"]
        return []


@POS.register("learned")
class LearnedPos(PosEncoding):
    Config = LearnedConfig

    def __init__(self, cfg: LearnedConfig, model_cfg):
        super().__init__(cfg, model_cfg)
        self.max_len = cfg.max_len or model_cfg.seq_len
        self.table = nn.Embedding(self.max_len, model_cfg.d_model)
        nn.init.normal_(self.table.weight, std=model_cfg.init_std)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        idx = positions[..., 0].long()  # (B, T)
        if idx.numel() and int(idx.max()) >= self.max_len:
            raise ValueError(
                f"position {int(idx.max())} is beyond pos.max_len={self.max_len} of the learned table"
            )
        return x + self.table(idx)
