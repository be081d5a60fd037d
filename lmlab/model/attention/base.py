"""The attention-layer interface every variant implements, and the KV cache they share.

A layer owns its projections and its cache format; the softmax math lives in ``kernels``.
Contract (checked for every registered variant by the contract tests):

- ``forward(x, positions, cache=None)``: x (B, T, C), positions (B, T, A) -> (B, T, C). Causal.
  With a cache, x holds only the new tokens; the layer appends what it needs to the cache, and the
  result equals the matching rows of a full forward pass over the whole sequence.
- ``new_cache()`` returns an empty cache for this layer.
- ``cache_elems_per_token()``: numbers cached per token for this layer (MHA 2·h·d_k; a
  constant-state variant returns 0 and reports its state in ``cache_state_elems``), and
  ``cache_formula()`` spelling it with the layer's numbers.
- ``attention_flops(context)``: score and value matmul FLOPs per token, in the prefill and decode
  forms; ``flops_per_token(context)`` adds the projections (``lmlab.cli.inspect``, MFU).
- ``aux_loss``: an extra training loss term (e.g. VQ commitment), or None; the model sums them.
- ``metrics()``: a dict of extra scalars to log (e.g. codebook perplexity).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lmlab.model import kernels


@dataclass
class AttentionConfig:
    name: str = "mha"
    impl: str = "sdpa"  # sdpa | manual (reference); see lmlab.model.kernels
    bias: bool = False  # bias terms in the q/k/v/o projections
    # why this variant cannot honour model.qk_norm, or None when it applies it (class attribute)
    qk_norm_refusal = None

    def check(self, run) -> list[str]:
        p = []
        if self.impl not in kernels.IMPLS:
            p.append(f"attention.impl='{self.impl}' is not one of {', '.join(kernels.IMPLS)}")
        if getattr(run.model, "qk_norm", False) is True and self.qk_norm_refusal:  # auto: resolved off
            p.append(f"model.qk_norm=true does not apply to attention.name={self.name}: {self.qk_norm_refusal}")
        return p


class KVCache:
    """Per-layer cache: named tensors grown along their time axis, plus the cached positions.

    Each tensor lives in a buffer with spare room that doubles when full, so decoding a token copies
    only that token's entries (amortised), not the whole cache; ``append`` returns a view of the
    filled part. Tensors are stored as (B, *, S, *) with the time axis given per name.
    """

    def __init__(self):
        self._buf: dict[str, torch.Tensor] = {}
        self._len: dict[str, int] = {}
        self.time_dim: dict[str, int] = {}
        self._pos_buf: Optional[torch.Tensor] = None
        self._pos_len = 0

    @property
    def length(self) -> int:
        return self._pos_len

    @property
    def positions(self) -> Optional[torch.Tensor]:  # (B, S, A)
        return None if self._pos_buf is None else self._pos_buf[:, : self._pos_len]

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: self._view(name) for name in self._buf}

    def _view(self, name: str) -> torch.Tensor:
        return self._buf[name].narrow(self.time_dim[name], 0, self._len[name])

    @staticmethod
    def _grow(buf: Optional[torch.Tensor], used: int, t: torch.Tensor, dim: int) -> torch.Tensor:
        need = used + t.shape[dim]
        if buf is None or need > buf.shape[dim]:
            shape = list(t.shape)
            shape[dim] = max(need, 2 * (buf.shape[dim] if buf is not None else 0), 16)
            new = t.new_empty(shape)
            if buf is not None and used:
                new.narrow(dim, 0, used).copy_(buf.narrow(dim, 0, used))
            buf = new
        buf.narrow(dim, used, t.shape[dim]).copy_(t)
        return buf

    def append(self, name: str, t: torch.Tensor, time_dim: int) -> torch.Tensor:
        """Append t along time_dim and return the whole cached tensor (a view)."""
        time_dim = time_dim % t.dim()
        self.time_dim[name] = time_dim
        used = self._len.get(name, 0)
        self._buf[name] = self._grow(self._buf.get(name), used, t, time_dim)
        self._len[name] = used + t.shape[time_dim]
        return self._view(name)

    def get(self, name: str) -> Optional[torch.Tensor]:
        return self._view(name) if name in self._buf else None

    def append_positions(self, positions: torch.Tensor) -> torch.Tensor:
        self._pos_buf = self._grow(self._pos_buf, self._pos_len, positions, 1)
        self._pos_len += positions.shape[1]
        return self.positions

    def n_elements_per_token(self) -> int:
        """Numbers cached per token per batch row, measured from the stored tensors."""
        total = 0
        for name, t in self.tensors.items():
            total += t.numel() // (t.shape[0] * t.shape[self.time_dim[name]])
        return total


class Attention(nn.Module):
    Config = AttentionConfig

    def __init__(self, cfg: AttentionConfig, model_cfg, pos):
        super().__init__()
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.pos = pos
        self.aux_loss: Optional[torch.Tensor] = None

    def new_cache(self) -> KVCache:
        return KVCache()

    def cache_elems_per_token(self) -> int:
        raise NotImplementedError

    def cache_formula(self) -> str:
        """The cache-per-token formula with this layer's numbers (e.g. "2·g·d_k = 2·4·64"), or ""."""
        return ""

    def attention_flops(self, context: int) -> dict[str, int]:
        """Matmul FLOPs per token of attention proper (query-key scores and probability-value
        products, one multiply-add = 2) for one token attending ``context`` keys:
        ``{"prefill": training/prefill form, "decode": cached decode form}``."""
        raise NotImplementedError

    def linear_flops_per_token(self) -> int:
        """2 x the weights of this layer's ``nn.Linear`` projections (one multiply-add each)."""
        return sum(2 * m.weight.numel() for m in self.modules() if isinstance(m, nn.Linear))

    def flops_per_token(self, context: int, form: str = "prefill") -> int:
        """Forward matmul FLOPs per token of this layer: projections plus attention at ``context``.
        Norms, softmax, rotary and biases are not counted."""
        return self.linear_flops_per_token() + self.attention_flops(context)[form]

    def cache_state_elems(self) -> int:
        """Constant-size state (independent of sequence length), in numbers per batch row."""
        return 0

    def metrics(self) -> dict[str, float]:
        return {}

    def positional_bias(self, q_pos, k_pos, n_head):
        if not self.pos.has_bias:
            return None
        p = next(self.parameters(), None)  # the bias is computed in float64 for a float64 layer
        return self.pos.bias(q_pos, k_pos, n_head, p.dtype if p is not None else torch.float32)
