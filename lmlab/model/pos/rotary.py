"""Shared rotary machinery (SPEC §6-§8): angles from float positions through an axis->frequency map.

A rotary scheme is fully described by, for each of the D/2 frequency pairs, its frequency
θ_i = base^(-2i/D) and the position axis that drives it. RoPE-1D drives every pair with axis 0;
RoPE-2D interleaves axes over pairs (so plain text (n, n) reproduces RoPE-1D exactly); M-RoPE
uses contiguous sections. Subclasses override ``pair_axes``.

Two memory layouts of the pairs are supported (SPEC §6 pitfall): ``interleaved`` pairs dims
(2i, 2i+1); ``half`` (GPT-NeoX / HF rotate_half) pairs dims (i, i + D/2). They agree after a fixed
permutation of q/k dims, which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from lmlab.model.pos.base import PosConfig, PosEncoding


@dataclass
class RotaryConfig(PosConfig):
    name: str = "rope"
    base: float = 10000.0
    layout: Literal["interleaved", "half"] = "interleaved"

    def check(self, run) -> list[str]:
        p = []
        dim, key = rotated_dim(run)
        if dim % 2 and not getattr(getattr(run, "attention", None), "rotary_dim_checked", False):  # MLA checks its own
            p.append(f"pos.name={self.name} rotates pairs of dims, but the head dim ({key} = {dim}) is odd")
        if self.base <= 1:
            p.append(f"pos.base={self.base} must be > 1")
        return p


def rotated_dim(run) -> tuple[int, str]:
    """(dims per head that ``rotate`` receives, the config key that sets it).

    The whole head (``model.head_dim``) unless the attention config says otherwise through a
    ``rotary_dim(model_cfg)`` method and ``rotary_dim_key`` (MLA's decoupled ``rope_head_dim``).
    """
    attn = getattr(run, "attention", None)
    if callable(getattr(attn, "rotary_dim", None)):
        return attn.rotary_dim(run.model), getattr(attn, "rotary_dim_key", "attention.rotary_dim")
    return run.model.head_dim, "model.head_dim"


def rotate_pairs(t: torch.Tensor, angles: torch.Tensor, layout: str) -> torch.Tensor:
    """t: (B, H, T, D); angles: (B, T, D/2) -> rotated t, same shape and dtype."""
    return apply_rotation(t, *rotation_tables(angles, t.dtype, layout), layout)


def rotation_tables(angles: torch.Tensor, dtype: torch.dtype, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """angles (B, T, D/2) -> (cos, signed sin), each (B, 1, T, D) in ``dtype``, laid out like q/k.

    cos and sin are taken in the angles' precision, then cast. The sin table carries the sign of
    the rotation: -sin on the first member of each pair, +sin on the second."""
    cos, sin = angles.cos()[:, None].to(dtype), angles.sin()[:, None].to(dtype)  # (B, 1, T, D/2)
    if layout == "interleaved":  # pair i = dims (2i, 2i+1)
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)
    return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)  # pair i = dims (i, i + D/2)


def apply_rotation(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, layout: str) -> torch.Tensor:
    """t: (B, H, T, D); cos, signed sin: (B, 1, T, D) from ``rotation_tables`` -> rotated t.

    Pair (x0, x1) -> (x0·cos - x1·sin, x1·cos + x0·sin) as t·cos + swap(t)·(∓sin), where swap
    exchanges the two members of every pair: two multiplies over whole tensors instead of four over
    strided halves plus a stack, and the tables are shared by every layer (``rotate``). Bit-identical
    to the pairwise formula (tests/test_pos_shared.py): a + (-b)·c == a - b·c in IEEE arithmetic, and
    the sums only change order."""
    if layout == "interleaved":
        swapped = t.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)  # (x1, x0) in every pair
    else:
        swapped = t.roll(t.shape[-1] // 2, dims=-1)  # (x1, x0): the halves exchanged
    return t * cos + swapped * sin


class RotaryBase(PosEncoding):
    Config = RotaryConfig
    rotary = True
    position_scheme = "flat"  # how lmlab.model.pos.assign lays out image/video segments

    def pair_axes(self, n_pairs: int) -> list[int]:
        """Which position axis drives each frequency pair."""
        return [0] * n_pairs

    def inv_freq(self, n_pairs: int, device) -> torch.Tensor:
        i = torch.arange(n_pairs, device=device, dtype=torch.float64)
        return self.cfg.base ** (-2.0 * i / (2 * n_pairs))

    def _freq_table(self, n_pairs: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(axis index per pair, inverse frequencies): constants of the module, built once per size and
        device instead of from Python lists in every call (a host->device copy per layer on GPU)."""
        cache = self.__dict__.setdefault("_freq_cache", {})
        key = (n_pairs, str(device))
        if key not in cache:
            axes = torch.tensor(self.pair_axes(n_pairs), device=device)
            cache[key] = (axes, self.inv_freq(n_pairs, device))
        return cache[key]

    def angles(self, positions: torch.Tensor, dim: int) -> torch.Tensor:
        """positions (B, T, A) -> angles (B, T, dim/2), computed in float64 for exact positions."""
        if positions.shape[-1] != self.n_axes:
            raise ValueError(
                f"pos '{self.cfg.name}' takes positions with {self.n_axes} axes (B, T, {self.n_axes}); "
                f"got shape {tuple(positions.shape)}"
            )
        axes, inv_freq = self._freq_table(dim // 2, positions.device)
        pos = positions.to(torch.float64).index_select(-1, axes)  # (B, T, D/2)
        ang = pos * inv_freq
        return ang if positions.dtype == torch.float64 else ang.float()

    def rotate(self, t: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # cos/sin depend only on (positions, D, dtype): inside Transformer.forward they are computed
        # once and shared by q and k of every layer (PosEncoding.shared_tables)
        D, layout = t.shape[-1], self.cfg.layout
        key = ("rotary", D, t.dtype, t.device)
        cos, sin = self.memo_table(key, positions, lambda: rotation_tables(self.angles(positions, D), t.dtype, layout))
        return apply_rotation(t, cos, sin, layout)
