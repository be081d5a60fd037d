"""Multi-head latent attention (DeepSeek-V2), in its training form and its absorbed decode form. SPEC §9.

Per token, x (width C) is compressed to a latent c = RMSNorm(x W_dkv) of width d_c, and a key part
k_r = RoPE(x W_kr) of width d_r is computed from x and *shared by all heads* (decoupled RoPE). Head s
then uses q = [q_nope, RoPE(q_rope)] (from x, or from a normed query latent when ``q_lora_rank`` is set),
k = [c W_uk[s], k_r], v = c W_uv[s], and softmax scale 1/sqrt(d_n + d_r) in *both* forms.

Design choices:
- ``expanded`` (training/prefill) form: up-project c to per-head keys and values, then ordinary
  attention with head size d_n + d_r.
- ``absorbed`` (decode) form: W_uk folds into the query (q_lat = q_nope W_ukᵀ, two matmuls, never the
  merged matrix) and W_uv into the output, so attention is an MQA with key [c, k_r] and value c. With
  the ``sdpa`` kernel the heads are folded into the query rows, so the shared latent is read once per
  step rather than copied per head.
- ``attention.form``: ``auto`` uses expanded without a cache and absorbed with one; ``expanded`` /
  ``absorbed`` force a form (tests compare them). Both forms read the same cache.
- The cache holds only [c | k_r] (k_r already rotated): d_c + d_r numbers per token per layer,
  independent of the number of heads.
- Position hooks touch only the decoupled part: ``rotate`` is applied to q_rope and k_r (never to c);
  ``bias`` (ALiBi-style) is added to the logits in both forms; ``embed``-type encodings act upstream.
  With a non-rotary encoding the decoupled part is an unrotated shared key part (d_r may then be 0).
- The up-projections (W_uq, W_uk, W_uv) never carry a bias, as in DeepSeek-V2, so absorption is exact;
  ``attention.bias`` applies to the down-projections and W_o.

Guarantees (tests/test_attention_mla.py): absorbed == expanded to rounding in float64 (and within
a stated tolerance in float32), with and without a cache; cached decoding == full forward; causal;
the cache holds d_c + d_r numbers per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
from torch import nn

from lmlab.model import kernels
from lmlab.model.attention.base import Attention, AttentionConfig, KVCache
from lmlab.registry import ATTENTION, POS


@dataclass
class MLAConfig(AttentionConfig):
    name: str = "mla"
    kv_lora_rank: Optional[int] = None  # d_c; default 4·head_dim (SPEC §9: d_c = 4 d_h)
    q_lora_rank: Optional[int] = None  # d_c'; None: queries straight from x (DeepSeek-V2-Lite)
    rope_head_dim: Optional[int] = None  # d_r; default head_dim/2 rounded down to even (>= 2)
    nope_head_dim: Optional[int] = None  # d_n; default head_dim
    v_head_dim: Optional[int] = None  # d_v; default head_dim
    form: Literal["auto", "expanded", "absorbed"] = "auto"

    def dims(self, model_cfg) -> tuple[int, int, int, int]:
        """(d_c, d_r, d_n, d_v) with defaults resolved from the model's head size."""
        d = model_cfg.head_dim
        d_c = self.kv_lora_rank if self.kv_lora_rank is not None else 4 * d
        d_r = self.rope_head_dim if self.rope_head_dim is not None else max(2, d // 2 // 2 * 2)
        d_n = self.nope_head_dim if self.nope_head_dim is not None else d
        d_v = self.v_head_dim if self.v_head_dim is not None else d
        return d_c, d_r, d_n, d_v

    rotary_dim_key = "attention.rope_head_dim"
    rotary_dim_checked = True  # check() below vets rope_head_dim; the rotary pos check leaves it alone

    def resolve(self, run) -> None:
        """Write the derived dims into the config (the saved config.yaml then shows them)."""
        self.kv_lora_rank, self.rope_head_dim, self.nope_head_dim, self.v_head_dim = self.dims(run.model)

    qk_norm_refusal = (
        "MLA has no per-head key to normalise: its rotary key part is shared by all heads and the rest"
        " is the up-projected latent (already RMS-normed), whose up-projection the absorbed decode form"
        " folds into the query -- a norm after it would make the two forms differ"
    )

    def rotary_dim(self, model_cfg) -> int:
        """Position encodings rotate only the decoupled part (SPEC §9)."""
        return self.dims(model_cfg)[1]

    def check(self, run) -> list[str]:
        p = super().check(run)
        d_c, d_r, d_n, d_v = self.dims(run.model)
        for key, val in (("kv_lora_rank", d_c), ("nope_head_dim", d_n), ("v_head_dim", d_v)):
            if val <= 0:
                p.append(f"attention.{key}={val} must be positive")
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            p.append(f"attention.q_lora_rank={self.q_lora_rank} must be positive or null")
        if d_r < 0:
            p.append(f"attention.rope_head_dim={d_r} must be >= 0")
        if run.pos is not None and run.pos.name in POS and POS.get(run.pos.name).rotary:
            if d_r == 0:
                p.append(
                    f"attention.rope_head_dim=0 leaves pos.name={run.pos.name} nothing to rotate"
                    " (MLA applies rotary encodings only to the decoupled part); set it > 0"
                )
            elif d_r % 2:
                p.append(f"attention.rope_head_dim={d_r} must be even for rotary pos.name={run.pos.name}")
        return p


@ATTENTION.register("mla")
class MLA(Attention):
    Config = MLAConfig

    def __init__(self, cfg: MLAConfig, model_cfg, pos):
        super().__init__(cfg, model_cfg, pos)
        C, H = model_cfg.d_model, model_cfg.n_head
        self.n_head = H
        self.d_c, self.d_r, self.d_n, self.d_v = cfg.dims(model_cfg)
        q_in = C
        if cfg.q_lora_rank:
            self.q_down = nn.Linear(C, cfg.q_lora_rank, bias=cfg.bias)
            self.q_norm = nn.RMSNorm(cfg.q_lora_rank, eps=model_cfg.norm_eps)
            q_in = cfg.q_lora_rank
        self.q_up = nn.Linear(q_in, H * (self.d_n + self.d_r), bias=False)  # per head [W_uq | W_qr]
        self.kv_down = nn.Linear(C, self.d_c + self.d_r, bias=cfg.bias)  # [W_dkv | W_kr], one matmul
        self.kv_norm = nn.RMSNorm(self.d_c, eps=model_cfg.norm_eps)
        self.kv_up = nn.Linear(self.d_c, H * (self.d_n + self.d_v), bias=False)  # per head [W_uk | W_uv]
        self.o_proj = nn.Linear(H * self.d_v, C, bias=cfg.bias)
        self.scale = 1.0 / math.sqrt(self.d_n + self.d_r)  # fixed by the training form (SPEC §9 pitfall)
        self.dropout = model_cfg.dropout

    def cache_elems_per_token(self) -> int:
        return self.d_c + self.d_r

    def cache_formula(self) -> str:
        return f"d_c + d_r = {self.d_c} + {self.d_r}"

    def attention_flops(self, context: int) -> dict[str, int]:
        """Score + value FLOPs per token attending ``context`` keys, in each form (absorbed adds the
        two per-head absorption matmuls; it skips kv_up for the new token, which costs the same)."""
        H, L = self.n_head, context
        expanded = 2 * H * (self.d_n + self.d_r) * L + 2 * H * self.d_v * L
        absorbed = 2 * H * (self.d_c + self.d_r) * L + 2 * H * self.d_c * L
        return {"prefill": expanded, "decode": absorbed}

    def _rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.pos.rotate(t, positions) if self.d_r else t

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: Optional[KVCache] = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, d_n, d_r = self.n_head, self.d_n, self.d_r
        cq = self.q_norm(self.q_down(x)) if self.cfg.q_lora_rank else x
        q = self.q_up(cq).view(B, T, H, d_n + d_r).transpose(1, 2)  # (B, H, T, d_n + d_r)
        q_nope, q_rope = q.split([d_n, d_r], dim=-1)
        q_rope = self._rotate(q_rope, positions)  # per-head rotary part
        c, kr = self.kv_down(x).split([self.d_c, d_r], dim=-1)  # (B, T, d_c), (B, T, d_r)
        kr = self._rotate(kr[:, None], positions)[:, 0]  # shared rotary key, never touches c
        ckr = torch.cat((self.kv_norm(c), kr), dim=-1)  # (B, T, d_c + d_r): what is cached
        k_pos = positions
        if cache is not None:
            ckr = cache.append("ckr", ckr, time_dim=1)  # (B, S, d_c + d_r)
            k_pos = cache.append_positions(positions)
        bias = self.positional_bias(positions, k_pos, H)
        form = self.cfg.form if self.cfg.form != "auto" else ("absorbed" if cache is not None else "expanded")
        if form == "absorbed":
            y = self._absorbed(q_nope, q_rope, ckr, bias)
        else:
            y = self._expanded(q_nope, q_rope, ckr, bias)  # (B, H, T, d_v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * self.d_v))

    def _expanded(self, q_nope, q_rope, ckr, bias):
        B, H, T, _ = q_nope.shape
        S = ckr.shape[1]
        c, kr = ckr.split([self.d_c, self.d_r], dim=-1)
        kv = self.kv_up(c).view(B, S, H, self.d_n + self.d_v).transpose(1, 2)  # (B, H, S, d_n + d_v)
        k_nope, v = kv.split([self.d_n, self.d_v], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)  # (B, H, T, d_n + d_r)
        k = torch.cat((k_nope, kr[:, None].expand(B, H, S, self.d_r)), dim=-1)  # (B, H, S, d_n + d_r)
        return self._attend(q, k, v, bias, causal=True, pad_v=q.shape[2] > 1)

    def _attend(self, q, k, v, bias, causal: bool, pad_v: bool):
        """kernels.attention. With sdpa and ``pad_v`` (several queries), v is zero-padded to the q/k
        head size and the output cut back: torch's fused CPU kernels need equal sizes and otherwise
        fall back to a path that materialises the T×S matrix (~6× slower at T = 8192). Single-token
        decoding skips the pad, which would copy the whole cache every step."""
        dv, dqk = v.shape[-1], q.shape[-1]
        pad_v = pad_v and self.cfg.impl == "sdpa" and dv < dqk
        if pad_v:
            v = torch.nn.functional.pad(v, (0, dqk - dv))
        y = kernels.attention(
            q, k, v, causal=causal, bias=bias, scale=self.scale,
            dropout_p=self.dropout if self.training else 0.0, impl=self.cfg.impl,
        )
        return y[..., :dv] if pad_v else y

    def _absorbed(self, q_nope, q_rope, ckr, bias):
        H = self.n_head
        w = self.kv_up.weight.view(H, self.d_n + self.d_v, self.d_c)
        w_uk, w_uv = w[:, : self.d_n], w[:, self.d_n :]  # (H, d_n, d_c), (H, d_v, d_c)
        q_lat = torch.einsum("bhtn,hnc->bhtc", q_nope, w_uk)  # (B, H, T, d_c)
        qa = torch.cat((q_lat, q_rope), dim=-1)  # (B, H, T, d_c + d_r)
        K = ckr[:, None]  # (B, 1, S, d_c + d_r): one key head shared by all query heads
        V = ckr[:, None, :, : self.d_c]  # (B, 1, S, d_c): the value is the latent itself
        o_lat = self._shared_kv_attention(qa, K, V, bias)  # (B, H, T, d_c)
        return torch.einsum("bhtc,hvc->bhtv", o_lat, w_uv)  # (B, H, T, d_v)

    def _shared_kv_attention(self, q, K, V, bias):
        """Attention of H query heads against one shared key/value head."""
        if self.cfg.impl == "manual":  # the manual kernel groups heads by views: no per-head copies
            return self._attend(q, K, V, bias, causal=True, pad_v=False)
        B, H, T, Dq = q.shape
        S = K.shape[2]
        mask = None
        if T > 1:
            mask = torch.zeros(T, S, dtype=q.dtype, device=q.device)
            mask = mask.masked_fill(~kernels.causal_mask(T, S, q.device), float("-inf"))
        if bias is not None:
            mask = bias if mask is None else bias + mask
        if mask is not None:
            while mask.dim() < 4:
                mask = mask[None]
            mask = mask.expand(mask.shape[0], H, T, S).reshape(mask.shape[0], 1, H * T, S)  # (B|1, 1, H·T, S)
        out = self._attend(q.reshape(B, 1, H * T, Dq), K, V, mask, causal=False, pad_v=T > 1)
        # (B, 1, H·T, d_c): heads folded into query rows, K/V read once
        return out.view(B, H, T, V.shape[-1])
