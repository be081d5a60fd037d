"""Softmax-attention kernels: the numeric core, apart from the layers that own projections and caches.

``attention`` computes softmax(q kᵀ·scale + bias + causal mask) v. Two implementations are kept and
tested equal: ``sdpa`` (torch's fused scaled_dot_product_attention) and ``manual`` (plain matmuls,
the reference; also the only one that can return attention weights).

Queries are the *last* Tq positions of the Sk keys (Tq == Sk in training, Tq < Sk when decoding
with a cache), so the causal mask is aligned bottom-right. SDPA's own ``is_causal`` aligns
top-left, which is why we pass an explicit mask when Tq != Sk.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

IMPLS = ("sdpa", "manual")


def causal_mask(tq: int, sk: int, device: torch.device) -> torch.Tensor:
    """(Tq, Sk) bool, True where query i (at absolute position sk - tq + i) may attend key j."""
    q_pos = torch.arange(sk - tq, sk, device=device)[:, None]
    return torch.arange(sk, device=device)[None, :] <= q_pos


def attention(
    q: torch.Tensor,  # (B, H, Tq, D)
    k: torch.Tensor,  # (B, G, Sk, D), G divides H (G < H: grouped/multi-query)
    v: torch.Tensor,  # (B, G, Sk, Dv)
    *,
    causal: bool = True,
    bias: Optional[torch.Tensor] = None,  # additive, broadcastable to (B, H, Tq, Sk)
    scale: Optional[float] = None,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
) -> torch.Tensor:  # (B, H, Tq, Dv)
    H, G = q.shape[1], k.shape[1]
    tq, sk = q.shape[2], k.shape[2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if impl == "manual":
        return _manual(q, k, v, causal=causal, bias=bias, scale=scale, dropout_p=dropout_p)
    if impl != "sdpa":
        raise ValueError(f"unknown attention impl '{impl}'; available: {', '.join(IMPLS)}")
    mask = None
    is_causal = False
    if bias is not None:
        # torch 2.13 CPU SDPA silently miscomputes a float64 query with a float32 mask (T >= ~16)
        mask = bias.to(torch.promote_types(q.dtype, bias.dtype))
        if causal and tq > 1:
            mask = mask.masked_fill(~causal_mask(tq, sk, q.device), float("-inf"))
    elif causal and tq > 1:
        if tq == sk:
            is_causal = True
        else:
            mask = causal_mask(tq, sk, q.device)
    # enable_gqa lets the kernel read each shared key/value head once instead of a copy per query head
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, enable_gqa=G != H
    )


def _manual(q, k, v, *, causal, bias, scale, dropout_p):
    H, G = q.shape[1], k.shape[1]
    B, _, tq, D = q.shape
    sk = k.shape[2]
    qg = q.view(B, G, H // G, tq, D)  # (B, G, H/G, Tq, D): heads of one group share k, v
    att = torch.einsum("bgrtd,bgsd->bgrts", qg, k) * scale  # (B, G, H/G, Tq, Sk)
    att = att.reshape(B, H, tq, sk)
    if bias is not None:
        att = att + bias
    if causal and tq > 1:
        att = att.masked_fill(~causal_mask(tq, sk, q.device), float("-inf"))
    att = att.softmax(dim=-1)
    if dropout_p > 0:
        att = F.dropout(att, p=dropout_p)
    out = torch.einsum("bgrts,bgsd->bgrtd", att.view(B, G, H // G, tq, sk), v)
    return out.reshape(B, H, tq, v.shape[-1])
