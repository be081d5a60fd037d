"""ALiBi (Press et al. 2022): no rotation or embedding; head h adds -m_h·|q_pos - k_pos| to its logits.

Design choices and guarantees:
- Slopes are the paper's: for n heads a power of two, m_h = 2^(-8h/n), h = 1..n (8 heads: 1/2 .. 1/256);
  otherwise the slopes of the largest power of two c < n, followed by every other slope of 2c
  (the reference ``get_slopes``). Tested against the known values.
- The bias uses axis 0 of the positions: images are laid out flat (``assign`` scheme ``flat``), and
  positions may be floats. Query positions are compared with *cached* key positions, so incremental
  decoding with a KV cache gives the full pass's logits (tests/test_pos_model.py).
- The distance is symmetric, |Δ|; under the causal mask only keys at or before the query count, where
  it is the paper's -m·(i - j).
- Computed in float64 and returned as float32, or float64 when the module (``model.double()``) or the
  positions are float64, shape (B, H, Tq, Sk). Never narrower than float32: at distance 1000 a bf16
  bias would be off by ~2 logits. (Also a workaround: torch 2.13's CPU SDPA silently returns wrong
  values for a float32 mask with float64 queries once T >= ~16, so the dtypes must match there.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lmlab.model.pos.base import PosConfig, PosEncoding
from lmlab.registry import POS


def alibi_slopes(n_head: int) -> list[float]:
    """The ALiBi head slopes (Press et al., reference implementation)."""

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (h + 1) for h in range(n)]

    if n_head <= 0:
        raise ValueError(f"ALiBi needs at least one head, got {n_head}")
    if math.log2(n_head).is_integer():
        return power_of_two(n_head)
    c = 2 ** math.floor(math.log2(n_head))
    return power_of_two(c) + power_of_two(2 * c)[0::2][: n_head - c]


@dataclass
class ALiBiConfig(PosConfig):
    name: str = "alibi"


@POS.register("alibi")
class ALiBi(PosEncoding):
    Config = ALiBiConfig
    has_bias = True

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, n_head: int,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """q_pos (B, Tq, A), k_pos (B, Sk, A) -> additive logits (B, H, Tq, Sk); float64 when the
        positions or the attention layer (``dtype``) are float64, else float32."""
        wide = torch.float64 in (q_pos.dtype, dtype)
        dtype = torch.float64 if wide else torch.float32

        def make():
            dist = (q_pos[..., 0, None] - k_pos[..., None, :, 0]).abs().to(torch.float64)  # (B, Tq, Sk)
            m = torch.tensor(alibi_slopes(n_head), dtype=torch.float64, device=q_pos.device)  # (H,)
            return (-m[None, :, None, None] * dist[:, None]).to(dtype)  # (B, H, Tq, Sk)

        if k_pos is not q_pos:  # decoding against cached keys: each layer's cache is its own object
            return make()
        # without a cache every layer gets the same (B, H, T, T) table: built once per forward pass
        return self.memo_table(("alibi", n_head, dtype), q_pos, make)
