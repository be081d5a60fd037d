"""Decoder-only Transformer whose attention and position encoding come from the registries.

Pre-norm blocks: x + Attn(Norm(x)), then x + MLP(Norm(x)); Norm is RMSNorm (default) or LayerNorm
(``model.norm``); SwiGLU, GELU (exact erf) or GELU-tanh (GPT-2) MLP, with biases when ``model.bias``
(the MLP linears and LayerNorm; attention projections follow ``attention.bias``); optional tied
input/output embeddings. The model knows nothing of any particular variant: it builds
``ATTENTION.get(cfg.attention.name)`` per layer and one shared ``POS`` module, passes positions
(B, T, A) through, and sums the layers' auxiliary losses.

``forward`` also takes ``embeds`` (B, T, C) to replace token embeddings at chosen slots (the
image-text lab feeds continuous patches this way) and per-layer ``caches`` for incremental decoding.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.registry import ATTENTION, POS


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


def make_norm(cfg) -> nn.Module:
    """``model.norm``: RMSNorm (no bias term) or LayerNorm (bias iff ``model.bias``), eps ``model.norm_eps``."""
    if getattr(cfg, "norm", "rmsnorm") == "layernorm":
        return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=getattr(cfg, "bias", False))
    return RMSNorm(cfg.d_model, cfg.norm_eps)


def ffn_hidden(cfg) -> int:
    """MLP hidden width: ``model.ffn_dim`` if set, else mlp_ratio*d (gelu) or 2/3 of it rounded up to 32 (swiglu)."""
    if getattr(cfg, "ffn_dim", None) is not None:
        return cfg.ffn_dim
    if cfg.mlp == "swiglu":  # 2/3 of the GELU width keeps the parameter count equal
        return int(math.ceil(cfg.mlp_ratio * cfg.d_model * 2 / 3 / 32) * 32)
    return int(cfg.mlp_ratio * cfg.d_model)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        C = cfg.d_model
        self.kind = cfg.mlp
        bias = getattr(cfg, "bias", False)
        hidden = ffn_hidden(cfg)
        self.up = nn.Linear(C, 2 * hidden if cfg.mlp == "swiglu" else hidden, bias=bias)  # swiglu: [gate; up]
        self.down = nn.Linear(hidden, C, bias=bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.kind == "swiglu":
            a, b = h.chunk(2, dim=-1)
            h = F.silu(a) * b
        elif self.kind == "gelu_tanh":  # GPT-2's "gelu_new"
            h = F.gelu(h, approximate="tanh")
        elif self.kind == "relu2":  # squared ReLU (So et al. 2021, Primer)
            h = F.relu(h).square()
        else:
            h = F.gelu(h)
        return self.dropout(self.down(h))


class Block(nn.Module):
    def __init__(self, model_cfg, attn_cfg, pos):
        super().__init__()
        self.norm1 = make_norm(model_cfg)
        self.attn = ATTENTION.get(attn_cfg.name)(attn_cfg, model_cfg, pos)
        self.norm2 = make_norm(model_cfg)
        self.mlp = MLP(model_cfg)
        self.resid_dropout = nn.Dropout(model_cfg.dropout)

    def forward(self, x, positions, cache=None):
        x = x + self.resid_dropout(self.attn(self.norm1(x), positions, cache))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, model_cfg, attn_cfg, pos_cfg, vocab_size: int):
        super().__init__()
        self.cfg = model_cfg
        self.vocab_size = vocab_size
        self.pos = POS.get(pos_cfg.name)(pos_cfg, model_cfg)
        self.tok_emb = nn.Embedding(vocab_size, model_cfg.d_model)
        self.emb_dropout = nn.Dropout(model_cfg.dropout)
        self.blocks = nn.ModuleList(Block(model_cfg, attn_cfg, self.pos) for _ in range(model_cfg.n_layer))
        self.norm_f = make_norm(model_cfg)
        self.lm_head = nn.Linear(model_cfg.d_model, vocab_size, bias=False)
        self.apply(self._init)
        if model_cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        # GPT-2 style: scale output projections of residual branches by depth
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down.weight")):
                nn.init.normal_(p, std=model_cfg.init_std / math.sqrt(2 * model_cfg.n_layer))

    def _init(self, m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=self.cfg.init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=self.cfg.init_std)

    def n_params(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and not self.cfg.tie_embeddings:
            n -= self.tok_emb.weight.numel()
        return n

    def new_caches(self) -> list:
        return [b.attn.new_cache() for b in self.blocks]

    def forward(
        self,
        idx: Optional[torch.Tensor] = None,  # (B, T) token ids
        positions: Optional[torch.Tensor] = None,  # (B, T, A) float
        caches: Optional[list] = None,
        embeds: Optional[torch.Tensor] = None,  # (B, T, C): used instead of tok_emb(idx)
        return_hidden: bool = False,
    ):
        x = self.tok_emb(idx) if embeds is None else embeds  # (B, T, C)
        B, T, _ = x.shape
        if positions is None:
            offset = caches[0].length if caches else 0
            positions = self.pos.default_positions(B, T, offset, device=x.device)
        x = self.emb_dropout(self.pos.embed(x, positions))
        with self.pos.shared_tables(positions):  # rotary cos/sin, ALiBi bias: once, not once per layer
            for i, block in enumerate(self.blocks):
                x = block(x, positions, caches[i] if caches is not None else None)
        h = self.norm_f(x)
        logits = self.lm_head(h)  # (B, T, V)
        if self.cfg.logit_softcap is not None:  # tanh softcap (Gemma 2): |logits| <= c, smooth
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits / c)
        return (logits, h) if return_hidden else logits

    def aux_loss(self) -> Optional[torch.Tensor]:
        terms = [b.attn.aux_loss for b in self.blocks if b.attn.aux_loss is not None]
        return torch.stack(terms).sum() if terms else None

    def cache_elems_per_token(self) -> int:
        """Cached numbers per token summed over layers (SPEC §9 formulas, per batch row)."""
        return sum(b.attn.cache_elems_per_token() for b in self.blocks)

    def flops_per_token(self, context: Optional[int] = None, form: str = "prefill") -> int:
        """Forward matmul FLOPs per token (one multiply-add = 2) at ``context`` keys (default
        ``seq_len``): every layer's ``attn.flops_per_token`` (projections + attention in ``form``,
        "prefill" or "decode"), the MLPs and the LM head. Norms, softmax, activations, rotary/bias and
        the embedding lookup are not counted; training is about 3 x this (forward + backward)."""
        L = self.cfg.seq_len if context is None else context
        mlp = sum(2 * m.weight.numel() for b in self.blocks for m in b.mlp.modules() if isinstance(m, nn.Linear))
        attn = sum(b.attn.flops_per_token(L, form) for b in self.blocks)
        return attn + mlp + 2 * self.lm_head.weight.numel()


def build_model(run, vocab_size: int) -> Transformer:
    return Transformer(run.model, run.attention, run.pos, vocab_size)
