"""Multi-head attention (Vaswani et al. 2017): every head has its own q, k, v. SPEC §9.

Cache per token per layer: 2·h·d_k numbers (k and v of every head). GQA/MQA subclass this with
fewer key/value heads; with as many groups as heads GQA is exactly this layer.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from lmlab.model import kernels
from lmlab.model.attention.base import Attention, AttentionConfig, KVCache
from lmlab.registry import ATTENTION


@ATTENTION.register("mha")
class MHA(Attention):
    Config = AttentionConfig

    def kv_head_count(self) -> int:
        """How many key/value heads this layer has (GQA/MQA override); stored as ``self.n_kv_head``."""
        return self.model_cfg.n_head

    def __init__(self, cfg: AttentionConfig, model_cfg, pos):
        super().__init__(cfg, model_cfg, pos)
        C, H, D = model_cfg.d_model, model_cfg.n_head, model_cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = H, self.kv_head_count(), D
        self.q_proj = nn.Linear(C, H * D, bias=cfg.bias)
        self.kv_proj = nn.Linear(C, 2 * self.n_kv_head * D, bias=cfg.bias)
        self.o_proj = nn.Linear(H * D, C, bias=cfg.bias)
        self.dropout = model_cfg.dropout
        # model.qk_norm: one RMSNorm (gain over the head size) for all query heads, one for keys
        self.q_norm = nn.RMSNorm(D, eps=model_cfg.norm_eps) if model_cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(D, eps=model_cfg.norm_eps) if model_cfg.qk_norm else None

    def cache_elems_per_token(self) -> int:
        return 2 * self.n_kv_head * self.head_dim

    def cache_formula(self) -> str:
        return f"2·g·d_k = 2·{self.n_kv_head}·{self.head_dim}"

    def attention_flops(self, context: int) -> dict[str, int]:
        f = 4 * self.n_head * self.head_dim * context  # q·k scores and weighted values, every head
        return {"prefill": f, "decode": f}

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k, v = self.kv_proj(x).view(B, T, 2, self.n_kv_head, self.head_dim).unbind(2)  # (B, T, G, D) each
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # (B, G, T, D)
        if self.q_norm is not None:  # before rotation, so rotary sees unit-RMS heads
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.pos.rotate(q, positions), self.pos.rotate(k, positions)
        k_pos = positions
        if cache is not None:
            k = cache.append("k", k, time_dim=2)  # (B, G, S, D)
            v = cache.append("v", v, time_dim=2)
            k_pos = cache.append_positions(positions)
        y = kernels.attention(
            q, k, v,
            causal=True,
            bias=self.positional_bias(positions, k_pos, self.n_head),
            dropout_p=self.dropout if self.training else 0.0,
            impl=self.cfg.impl,
        )  # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))
