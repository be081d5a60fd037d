"""Transformer-VQ numerics (SPEC §10): quantization with a straight-through estimator, the quadratic
reference, and the block-recurrent linear-time form with its one-token decode step.

Notation: q, k̂ (B, H, T, D) with k̂ = C[z] a codeword of the per-head codebook C (H, K, D); v (B, H, T, Dv).
The local bias b (H, w) adds b[δ] to the logit of a key δ = t - j tokens back when 0 <= δ < w, and
nothing beyond; w <= block length l, so it only reaches the current and the previous block.

Linear form, for the block i holding query t (SPEC §10, mean + log-count form):
  logits = [q·k̂ⱼ·scale + b (block i, causal) | q·k̂ⱼ·scale + b (block i-1) | q·C_s·scale + log n_s]
  out    = softmax(logits) · [v_j (block i) | v_j (block i-1) | Ū_s]
where n_s counts and Ū_s averages the values of keys with code s in blocks <= i-2 (log 0 = -inf).
Because exp(q·C_s + log n_s)·Ū_s = Σ_{z_j = s} exp(q·k̂_j) v_j, this equals the quadratic form
softmax(q k̂ᵀ·scale + B + M) v exactly, in any block length l >= w. Blocks are vectorised: per-block
aggregates are summed by a cumulative sum over blocks, so memory is O(T·K/l·Dv + T·(2l + K)), linear in T.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from lmlab.model import kernels


def quantize(k: torch.Tensor, codebook: torch.Tensor):
    """k (B, H, T, D), codebook (H, K, D) -> (z (B, H, T), k̂ with STE, C[z]).

    z = argmin_s ||k - C_s||²; the forward value of k̂ is exactly C[z] and its gradient with respect
    to k is the identity: k̂ = sg(C[z]) + (k - sg(k)).
    """
    H = k.shape[1]
    dist = codebook.pow(2).sum(-1)[None, :, None] - 2 * torch.einsum("bhtd,hsd->bhts", k, codebook)
    z = dist.argmin(-1)  # (B, H, T)
    ck = codebook[torch.arange(H, device=k.device)[None, :, None], z]  # (B, H, T, D)
    return z, ck.detach() + (k - k.detach()), ck


def gather_codes(codebook: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """codebook (H, K, D), z (B, H, T) -> C[z] (B, H, T, D)."""
    return codebook[torch.arange(codebook.shape[0], device=z.device)[None, :, None], z]


def local_bias(bias: torch.Tensor, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
    """bias (H, w), token indices -> (H, Tq, Sk): bias[δ] for 0 <= δ = q - k < w, else 0."""
    w = bias.shape[1]
    delta = q_idx[:, None] - k_idx[None, :]  # (Tq, Sk)
    inside = (delta >= 0) & (delta < w)
    return torch.where(inside, bias[:, delta.clamp(0, w - 1)], bias.new_zeros(()))


def aggregate(z: torch.Tensor, v: torch.Tensor, K: int):
    """Per-code value sums U (B, H, K, Dv) and counts n (B, H, K) of the keys coded z (B, H, T)."""
    acc = torch.promote_types(v.dtype, torch.float32)
    with torch.autocast(v.device.type, enabled=False):
        onehot = F.one_hot(z, K).to(acc)  # (B, H, T, K)
        return torch.einsum("bhts,bhtd->bhsd", onehot, v.to(acc)), onehot.sum(2)


def vq_attention_quadratic(q, khat, v, bias, scale: float, impl: str = "manual") -> torch.Tensor:
    """Reference: softmax(q k̂ᵀ·scale + local bias + causal mask) v, O(T²). -> (B, H, T, Dv)."""
    idx = torch.arange(q.shape[2], device=q.device)
    b = local_bias(bias, idx, idx)[None].to(q.dtype)  # (1, H, T, T)
    return kernels.attention(q, khat, v, causal=True, bias=b, scale=scale, impl=impl)


def vq_attention_blocks(
    q: torch.Tensor,  # (B, H, T, D), T a multiple of block_len, token 0 at a block start
    khat: torch.Tensor,  # (B, H, T, D)
    z: torch.Tensor,  # (B, H, T) codes of khat
    v: torch.Tensor,  # (B, H, T, Dv)
    codebook: torch.Tensor,  # (H, K, D)
    bias: torch.Tensor,  # (H, w), w <= block_len
    block_len: int,
    scale: float,
    state: Optional[tuple[torch.Tensor, torch.Tensor]] = None,  # (U, n) of all earlier tokens
    dropout_p: float = 0.0,
) -> torch.Tensor:  # (B, H, T, Dv)
    B, H, T, D = q.shape
    K, Dv, bl = codebook.shape[1], v.shape[-1], block_len
    N = T // bl
    qb, kb, vb = q.view(B, H, N, bl, D), khat.view(B, H, N, bl, D), v.view(B, H, N, bl, Dv)
    kp = F.pad(kb, (0, 0, 0, 0, 1, 0))[:, :, :N]  # (B, H, N, l, D): keys of the previous block
    vp = F.pad(vb, (0, 0, 0, 0, 1, 0))[:, :, :N]
    i = torch.arange(bl, device=q.device)
    neg_inf = torch.tensor(float("-inf"), dtype=q.dtype, device=q.device)
    b_loc = local_bias(bias, i, i).to(q.dtype).masked_fill(i[:, None] < i[None, :], neg_inf)  # (H, l, l)
    b_prev = local_bias(bias, i + bl, i).to(q.dtype)  # (H, l, l): query row r is l + r after key col 0
    s_loc = torch.einsum("bhnld,bhnmd->bhnlm", qb, kb) * scale + b_loc[None, :, None]  # (B, H, N, l, l)
    s_prev = torch.einsum("bhnld,bhnmd->bhnlm", qb, kp) * scale + b_prev[None, :, None]
    first = torch.zeros(N, 1, 1, dtype=torch.bool, device=q.device)
    first[0] = True
    s_prev = s_prev.masked_fill(first, neg_inf)  # block 0 has no previous block
    acc = torch.promote_types(v.dtype, torch.float32)  # counts and sums stay exact under bf16 autocast
    with torch.autocast(q.device.type, enabled=False):
        onehot = F.one_hot(z, K).to(acc).view(B, H, N, bl, K)
        cnt = F.pad(onehot.sum(3).cumsum(2), (0, 0, 2, 0))[:, :, :N]  # (B, H, N, K): blocks <= i-2
        U = torch.einsum("bhnls,bhnld->bhnsd", onehot, vb.to(acc))
        U = F.pad(U.cumsum(2), (0, 0, 0, 0, 2, 0))[:, :, :N]  # (B, H, N, K, Dv)
        if state is not None:
            U = U + state[0][:, :, None]
            cnt = cnt + state[1][:, :, None]
    s_code = torch.einsum("bhnld,hsd->bhnls", qb, codebook) * scale + cnt.log()[:, :, :, None]
    Ubar = U / cnt.clamp(min=1)[..., None]  # mean value per code (SPEC §10 "aggregated cache")
    p = torch.cat((s_loc, s_prev, s_code), dim=-1).softmax(-1)  # (B, H, N, l, 2l + K)
    if dropout_p > 0:
        p = F.dropout(p, dropout_p)
    p_loc, p_prev, p_code = p.split([bl, bl, K], dim=-1)
    out = p_loc @ vb + p_prev @ vp + p_code @ Ubar  # (B, H, N, l, Dv)
    return out.reshape(B, H, T, Dv)


def vq_attention_step(q, wk, wv, U, n, codebook, bias, scale: float) -> torch.Tensor:
    """One query per row, q (B, H, 1, D), at the last of the W window keys wk (B, H, W, D) / wv, which
    hold exactly the current and previous block; (U, n) aggregate all older keys. -> (B, H, 1, Dv)."""
    W = wk.shape[2]
    idx = torch.arange(W, device=q.device)
    b = local_bias(bias, idx[-1:], idx).to(q.dtype)  # (H, 1, W)
    s_loc = q @ wk.transpose(-1, -2) * scale + b[None]  # (B, H, 1, W)
    s_code = torch.einsum("bhtd,hsd->bhts", q, codebook) * scale + n.log()[:, :, None]  # (B, H, 1, K)
    p_loc, p_code = torch.cat((s_loc, s_code), dim=-1).softmax(-1).split([W, n.shape[-1]], dim=-1)
    return p_loc @ wv + p_code @ (U / n.clamp(min=1)[..., None])
