"""Transformer-VQ attention (Lingle 2023): softmax attention over vector-quantized keys in linear time.
SPEC §10; the numerics live in ``vq_kernels``.

Design choices:
- Multi-head softmax attention with MHA's projections; each head quantizes its key against its own
  codebook of ``codebook_size`` codewords. Keys pass a parameter-free LayerNorm first (the paper's LN₀),
  so the codebook lives on a fixed scale. This is not the paper's single-head GAU: the rest of the
  block (MLP, norms) stays the lab's Transformer, so the variant is comparable with MHA.
- Codebook: EMA of per-code key sums and counts (γ = ``gamma``), kept as buffers, updated only in
  training mode (summed over ranks under torch.distributed); C_s = sum_s / max(count_s, 0.01).
  Initialised from N(0, 1), the scale of normalised keys. The LM loss gives it no gradient.
- Keys use the straight-through estimator; ``aux_loss`` = β·mean_t Σ_heads ||k_t - sg(C_z)||²
  (commitment, β = ``beta``). ``metrics()`` reports the perplexity of the code assignments of the last
  forward (mean over heads; at most ``codebook_size``).
- Positions: the layer owns a learned local bias b (H, ``window``) over distances 0..window-1 (window
  <= block_len), which is how it tells near from far. A rotary ``pos`` is a config error (a rotated
  key is no longer a codeword of a position-free codebook; SPEC §10 pitfalls), and so is a ``pos``
  with additive bias (not windowed, so it cannot act on the aggregated codes). Embedding-type
  encodings (none, learned, sinusoidal) act on the input and are fine.
- ``form=linear`` (default) is the block-recurrent computation; ``form=quadratic`` is the O(T²)
  reference over the same quantized keys (for tests and benchmarks). Gradients flow through the two
  exact blocks (STE to the keys) and through the aggregated values Ū (to the values), never to the
  keys of older blocks: the linearisation is exact in the forward pass only (SPEC §10 pitfall).
- Cache: a constant state per layer and batch row: per head the aggregated values and counts of
  every code (K·(Dv+1)) plus the codes and values of at most 2l-1 window tokens (current and previous
  block; keys are re-read from the codebook). ``cache_elems_per_token()`` is 0 and
  ``cache_state_elems()`` is H·(K·(Dv+1) + (2l-1)·(Dv+1)). The cache assumes the codebook does not
  change while decoding (eval mode).

Guarantees (tests/test_attention_vq.py): linear == quadratic over the quantized keys (float64), output
independent of the block length, plain softmax attention when the codebook holds every key, cached
decoding == full forward, causal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.model.attention import vq_kernels as vqk
from lmlab.model.attention.base import Attention, AttentionConfig, KVCache
from lmlab.registry import ATTENTION, POS


@dataclass
class VQConfig(AttentionConfig):
    name: str = "vq"
    codebook_size: int = 256  # K (the paper uses 512)
    block_len: int = 32  # l
    window: Optional[int] = None  # reach of the local bias; default block_len; must be <= block_len
    beta: float = 1e-4  # commitment loss weight
    gamma: float = 0.99  # codebook EMA decay
    form: Literal["linear", "quadratic"] = "linear"
    qk_norm_refusal = (
        "VQ keys already pass a parameter-free LayerNorm and are replaced by codewords; a learned"
        " per-head key norm would move the codebook's fixed scale (SPEC §10)"
    )

    @property
    def bias_window(self) -> int:
        return self.window if self.window is not None else self.block_len

    def check(self, run) -> list[str]:
        p = super().check(run)
        if self.codebook_size <= 0:
            p.append(f"attention.codebook_size={self.codebook_size} must be positive")
        if self.block_len <= 0:
            p.append(f"attention.block_len={self.block_len} must be positive")
        elif not 1 <= self.bias_window <= self.block_len:
            p.append(
                f"attention.window={self.window} must be in [1, attention.block_len={self.block_len}]:"
                " a longer local bias would reach blocks that are only kept as aggregated codes"
            )
        if not 0.0 < self.gamma < 1.0:
            p.append(f"attention.gamma={self.gamma} must be in (0, 1)")
        if self.beta < 0:
            p.append(f"attention.beta={self.beta} must be >= 0")
        if run.pos is not None and run.pos.name in POS:
            pos_cls = POS.get(run.pos.name)
            if pos_cls.rotary:
                p.append(
                    f"pos.name={run.pos.name} rotates keys, which attention=vq cannot honour: a rotated key"
                    " is no longer a codeword of the position-free codebook (SPEC §10). Use pos=none,"
                    " learned or sinusoidal; vq carries its own local relative bias"
                )
            if pos_cls.has_bias:
                p.append(
                    f"pos.name={run.pos.name} adds a bias at every distance, which attention=vq cannot"
                    " apply to keys it only keeps as aggregated codes; it has its own windowed local bias"
                )
        return p


class VQCache(KVCache):
    """Constant-size decode state of one VQ layer (see the module docstring)."""

    def __init__(self):
        super().__init__()
        self.n_seen = 0  # tokens consumed; the window starts at block max(0, n_seen // l - 1)
        self.U: Optional[torch.Tensor] = None  # (B, H, K, Dv) value sums of folded tokens
        self.n: Optional[torch.Tensor] = None  # (B, H, K) counts of folded tokens
        self.wz: Optional[torch.Tensor] = None  # (B, H, W) codes of the window tokens
        self.wv: Optional[torch.Tensor] = None  # (B, H, W, Dv) values of the window tokens

    @property
    def length(self) -> int:
        return self.n_seen

    def n_state_elements(self) -> int:
        """Numbers held per batch row (codes counted as one each)."""
        ts = [t for t in (self.U, self.n, self.wz, self.wv) if t is not None]
        return sum(t.numel() // t.shape[0] for t in ts)


@ATTENTION.register("vq")
class VQAttention(Attention):
    Config = VQConfig

    def __init__(self, cfg: VQConfig, model_cfg, pos):
        super().__init__(cfg, model_cfg, pos)
        C, H, D = model_cfg.d_model, model_cfg.n_head, model_cfg.head_dim
        self.n_head, self.head_dim, self.K, self.block_len = H, D, cfg.codebook_size, cfg.block_len
        self.q_proj = nn.Linear(C, H * D, bias=cfg.bias)
        self.kv_proj = nn.Linear(C, 2 * H * D, bias=cfg.bias)
        self.o_proj = nn.Linear(H * D, C, bias=cfg.bias)
        self.local_bias = nn.Parameter(torch.zeros(H, cfg.bias_window))
        self.register_buffer("code_sum", torch.randn(H, self.K, D))
        self.register_buffer("code_count", torch.ones(H, self.K))
        self.scale = 1.0 / math.sqrt(D)
        self.dropout = model_cfg.dropout
        self._counts: Optional[torch.Tensor] = None  # (H, K) code assignments of the last forward

    def codebook(self) -> torch.Tensor:  # (H, K, D)
        return self.code_sum / self.code_count.clamp(min=0.01)[..., None]

    def new_cache(self) -> VQCache:
        return VQCache()

    def cache_elems_per_token(self) -> int:
        return 0

    def cache_state_elems(self) -> int:
        return self.n_head * (self.K + 2 * self.block_len - 1) * (self.head_dim + 1)

    def attention_flops(self, context: int) -> dict[str, int]:
        """Per token, independent of context: quantization (K·D), scores and values against the two
        exact blocks (2l keys as computed by the block form) and the K codes, per head."""
        H, D, bl, K = self.n_head, self.head_dim, self.block_len, self.K
        f = 2 * H * K * D + 2 * H * (2 * bl + K) * D * 2
        return {"prefill": f, "decode": f}

    def metrics(self) -> dict[str, float]:
        if self._counts is None:
            return {}
        p = self._counts / self._counts.sum(-1, keepdim=True).clamp(min=1)
        ent = -(p * p.clamp(min=1e-12).log()).sum(-1)  # (H,)
        return {"codebook_perplexity": float(ent.exp().mean())}

    def forward(self, x: torch.Tensor, positions: torch.Tensor, cache: Optional[VQCache] = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.n_head, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k, v = self.kv_proj(x).view(B, T, 2, H, D).unbind(2)  # (B, T, H, D) each
        k, v = F.layer_norm(k.transpose(1, 2), (D,)), v.transpose(1, 2)  # (B, H, T, D); LN₀ on keys
        codebook = self.codebook()
        z, khat, ck = vqk.quantize(k, codebook)
        self._account(k, z, ck)
        if cache is None:
            y = self._full(q, khat, z, v, codebook)
        else:
            y = self._cached(q, khat, z, v, codebook, cache)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))

    def _account(self, k, z, ck) -> None:
        """Commitment loss, assignment counts, and (training only) the EMA codebook update."""
        H, K = self.n_head, self.K
        self.aux_loss = self.cfg.beta * (k - ck.detach()).pow(2).sum(-1).sum(1).mean()
        flat = (z + torch.arange(H, device=z.device)[None, :, None] * K).reshape(-1)  # head-major ids
        counts = torch.bincount(flat, minlength=H * K).view(H, K).to(k.dtype)
        self._counts = counts
        if not self.training:
            return
        with torch.no_grad():
            sums = torch.zeros(H * K, k.shape[-1], dtype=k.dtype, device=k.device)
            sums.index_add_(0, flat, k.detach().reshape(-1, k.shape[-1]))  # (H·K, D)
            sums = sums.view(H, K, -1)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(counts)
                torch.distributed.all_reduce(sums)
            g = self.cfg.gamma
            self.code_count.mul_(g).add_(counts.to(self.code_count.dtype), alpha=1 - g)
            self.code_sum.mul_(g).add_(sums.to(self.code_sum.dtype), alpha=1 - g)

    def _full(self, q, khat, z, v, codebook):
        if self.cfg.form == "quadratic":
            return vqk.vq_attention_quadratic(q, khat, v, self.local_bias, self.scale, self.cfg.impl)
        T = q.shape[2]
        pad = (-T) % self.block_len  # pad the future end; padded keys are never seen by real queries
        if pad:
            q, khat, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, khat, v))
            z = F.pad(z, (0, pad))
        y = vqk.vq_attention_blocks(
            q, khat, z, v, codebook, self.local_bias, self.block_len, self.scale,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return y[:, :, :T]

    def _cached(self, q, khat, z, v, codebook, cache: VQCache):
        B, H, T, D = q.shape
        bl = self.block_len
        if cache.U is None:
            acc = torch.promote_types(v.dtype, torch.float32)
            cache.U = v.new_zeros(B, H, self.K, v.shape[-1], dtype=acc)
            cache.n = v.new_zeros(B, H, self.K, dtype=acc)
            cache.wz = z.new_zeros(B, H, 0)
            cache.wv = v.new_zeros(B, H, 0, v.shape[-1])
        W0 = cache.wz.shape[2]  # window tokens already cached; the window starts at a block boundary
        wk = torch.cat((vqk.gather_codes(codebook, cache.wz), khat), dim=2)  # (B, H, W0 + T, D)
        wz, wv = torch.cat((cache.wz, z), dim=2), torch.cat((cache.wv, v), dim=2)
        if T == 1:
            y = vqk.vq_attention_step(q, wk, wv, cache.U, cache.n, codebook, self.local_bias, self.scale)
        else:  # several new tokens: block form over window + new, queries only for the new ones
            M = W0 + T
            pad = (-M) % bl
            qf = F.pad(q, (0, 0, W0, pad))
            wk_p, wv_p = F.pad(wk, (0, 0, 0, pad)), F.pad(wv, (0, 0, 0, pad))
            y = vqk.vq_attention_blocks(
                qf, wk_p, F.pad(wz, (0, pad)), wv_p, codebook, self.local_bias, bl, self.scale,
                state=(cache.U, cache.n),
            )[:, :, W0:M]
        # keep the block of the next token and the one before it; fold older tokens into (U, n)
        start = cache.n_seen - W0
        cache.n_seen += T
        drop = max(0, cache.n_seen // bl - 1) * bl - start
        if drop > 0:
            U, n = vqk.aggregate(wz[:, :, :drop], wv[:, :, :drop], self.K)
            cache.U, cache.n = cache.U + U, cache.n + n
            wz, wv = wz[:, :, drop:], wv[:, :, drop:]
        cache.wz, cache.wv = wz, wv
        return y
