"""Fixed sinusoidal absolute positions (Vaswani et al. 2017), computed for any float position."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmlab.model.pos.base import PosConfig, PosEncoding
from lmlab.registry import POS


@dataclass
class SinusoidalConfig(PosConfig):
    name: str = "sinusoidal"
    base: float = 10000.0


@POS.register("sinusoidal")
class SinusoidalPos(PosEncoding):
    Config = SinusoidalConfig

    def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        i = torch.arange((d + 1) // 2, device=x.device, dtype=torch.float32)
        ang = positions[..., :1].float() * self.cfg.base ** (-2 * i / d)  # (B, T, ceil(C/2))
        pe = torch.stack((ang.sin(), ang.cos()), dim=-1).flatten(-2)[..., :d]  # (B, T, C)
        return x + pe.to(x.dtype)
