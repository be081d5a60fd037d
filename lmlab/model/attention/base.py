"""The attention-layer interface every variant implements, and the KV cache they share.

A layer owns its projections and its cache format; the softmax math lives in ``kernels``.
Contract (checked for every registered variant by the contract tests):

- ``forward(x, positions, cache=None)``: x (B, T, C), positions (B, T, A) -> (B, T, C). Causal.
  With a cache, x holds only the new tokens; the layer appends what it needs to the cache, and the
  result equals the matching rows of a full forward pass over the whole sequence.
- ``new_cache()`` returns an empty cache for this layer.
- ``cache_elems_per_token()``: numbers cached per token for this layer (MHA 2·h·d_k; a
  constant-state variant returns 0 and reports its state in ``cache_state_elems``).
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

    def check(self, run) -> list[str]:
        if self.impl not in kernels.IMPLS:
            return [f"attention.impl='{self.impl}' is not one of {', '.join(kernels.IMPLS)}"]
        return []


class KVCache:
    """Per-layer cache: named tensors grown along the time axis, plus the cached positions.

    Tensors are stored as (B, *, S, *) with the time axis given per name at first append.
    """

    def __init__(self):
        self.tensors: dict[str, torch.Tensor] = {}
        self.time_dim: dict[str, int] = {}
        self.positions: Optional[torch.Tensor] = None  # (B, S, A)

    @property
    def length(self) -> int:
        return 0 if self.positions is None else self.positions.shape[1]

    def append(self, name: str, t: torch.Tensor, time_dim: int) -> torch.Tensor:
        """Append t along time_dim and return the whole cached tensor."""
        if name in self.tensors:
            t = torch.cat((self.tensors[name], t), dim=time_dim)
        self.tensors[name] = t
        self.time_dim[name] = time_dim
        return t

    def append_positions(self, positions: torch.Tensor) -> torch.Tensor:
        self.positions = positions if self.positions is None else torch.cat((self.positions, positions), 1)
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

    def cache_state_elems(self) -> int:
        """Constant-size state (independent of sequence length), in numbers per batch row."""
        return 0

    def metrics(self) -> dict[str, float]:
        return {}

    def positional_bias(self, q_pos, k_pos, n_head):
        return self.pos.bias(q_pos, k_pos, n_head) if self.pos.has_bias else None
