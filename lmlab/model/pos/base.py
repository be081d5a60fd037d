"""The position-encoding interface: three hooks that attention variants apply where they choose.

- ``embed(x, positions)``   adds an absolute encoding to the token embeddings (learned, sinusoidal);
- ``rotate(t, positions)``  rotates a query or key tensor (RoPE family); an attention variant applies
                            it to exactly the part of q/k it wants (MLA: only the decoupled part);
- ``bias(q_pos, k_pos, n_head)`` returns additive attention logits (ALiBi), or None.

Positions travel as a float tensor (B, T, A), A = ``n_axes`` of the scheme (1 text, 2 image, 3 video),
so half-integer positions (RoPE-Tie-v2) and multi-axis schemes need no change in the model.

Tables derived from positions alone (rotary cos/sin, the ALiBi bias) are the same in every layer.
``Transformer.forward`` wraps its layers in ``shared_tables(positions)``: inside it, a table is
computed the first time a layer asks for it and reused by the other layers (and by k after q), keyed
by (what, size, dtype, device) and valid only for that very ``positions`` object. Outside the block
(a layer called on its own, tests) every call computes afresh, so results are identical either way.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class PosConfig:
    name: str = "none"

    def check(self, run) -> list[str]:
        return []


class PosEncoding(nn.Module):
    Config = PosConfig
    n_axes: int = 1
    rotary: bool = False  # rotate() changes q/k
    has_bias: bool = False  # bias() returns logits
    position_scheme: str = "flat"  # how image/video segments are laid out (lmlab.model.pos.assign)

    def __init__(self, cfg: PosConfig, model_cfg):
        super().__init__()
        self.cfg = cfg
        self.model_cfg = model_cfg
        self._shared_for: Optional[torch.Tensor] = None  # the positions the memo below belongs to
        self._memo: dict = {}

    @contextmanager
    def shared_tables(self, positions: torch.Tensor):
        """Within the block, position tables for ``positions`` are computed once and shared."""
        saved = (self._shared_for, self._memo)
        self._shared_for, self._memo = positions, {}
        try:
            yield
        finally:  # never keep tables (or the positions) alive past one forward pass
            self._shared_for, self._memo = saved

    def memo_table(self, key: tuple, positions: torch.Tensor, make: Callable[[], object]):
        """``make()``, memoised under ``key`` while ``positions`` is the shared positions object."""
        if positions is not self._shared_for:
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def default_positions(self, batch: int, seq_len: int, offset: int = 0, device=None) -> torch.Tensor:
        """Positions of plain text: token n gets (n, n, ...) on every axis. (B, T, A) float."""
        p = torch.arange(offset, offset + seq_len, device=device, dtype=torch.float32)
        return p[None, :, None].expand(batch, seq_len, self.n_axes)

    def assign(self, segments) -> torch.Tensor:
        """Positions (N, A) of a [("text", n) | ("image", h, w) | ("video", t, h, w)] list (SPEC §8)."""
        from lmlab.model.pos.assign import assign_for

        return assign_for(self, segments)

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return t

    def bias(self, q_pos: torch.Tensor, k_pos: torch.Tensor, n_head: int,
             dtype: torch.dtype = torch.float32) -> Optional[torch.Tensor]:
        return None
