"""Image output heads: one hidden state -> a distribution over the 17 levels of each pixel of the next patch.

Pixels inside a patch are conditionally independent given the prefix (SPEC §15.3); p = 1 is exact
pixel-level autoregression. Every head exposes the same three things, all per pixel:

- ``log_pmf(h)``: (..., P, 17) log-probabilities of the levels, summing to 1 exactly (up to rounding);
- ``nll(h, levels)``: (..., P) negative log-likelihood in nats of the observed levels;
- ``penalty(h)``: a scalar regularizer added to the loss (0 for the categorical head).

Sampling draws a level from ``log_pmf`` (exact for both heads, since FBDM's bin masses are exact).

- ``categorical``: a linear layer to P·17 logits. A zeroed head gives exactly log2(17) bits/pixel.
- ``fbdm`` (SPEC §14): a linear layer to P·(2(N+1)+2) numbers per pixel read as (Re a, Im a, raw s, t).
  ``mode=real`` (default): real-line bins [v-½, v+½] with the outer bins opened to ±∞, no bandwidth
  floor (pitfalls 4-5). Init per the SPEC §14 table: weights ×0.01, a_0 bias 1, s ≈ half the range
  (8 levels), t = the midpoint (8) -- it starts near 4 bits/pixel, not at the 1e-12 clamp (pitfall 9).
  ``mode=unit``: 17 equal bins tiling [-1, 1] (use N ≥ 2·17 = 34, pitfall 4). The smoothness penalty
  γ·∫|p'|² on the normalized coefficients (scale-free, pitfall 6).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.multimodal import fbdm
from lmlab.multimodal.digits import LEVELS


class ImageHead(nn.Module):
    def __init__(self, d_model: int, pixels: int):
        super().__init__()
        self.pixels = pixels

    def log_pmf(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def nll(self, h: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
        return -self.log_pmf(h).gather(-1, levels[..., None]).squeeze(-1)

    def penalty(self, h: torch.Tensor) -> torch.Tensor:
        return h.new_zeros(())

    @torch.no_grad()
    def sample(self, h: torch.Tensor, generator=None, temperature: float = 1.0) -> torch.Tensor:
        """(..., C) -> sampled levels (..., P)."""
        logp = self.log_pmf(h) / temperature  # (..., P, 17)
        probs = logp.softmax(-1).reshape(-1, LEVELS)
        draw = torch.multinomial(probs, 1, generator=generator)
        return draw.view(logp.shape[:-1])


class CategoricalHead(ImageHead):
    def __init__(self, d_model: int, pixels: int):
        super().__init__(d_model, pixels)
        self.proj = nn.Linear(d_model, pixels * LEVELS)

    def log_pmf(self, h):
        logits = self.proj(h).unflatten(-1, (self.pixels, LEVELS))  # (..., P, 17)
        return logits.float().log_softmax(-1)


class FBDMHead(ImageHead):
    def __init__(self, d_model: int, pixels: int, n_freq: int = 16, mode: str = "real", gamma: float = 1e-4,
                 init_std: float = 0.02):
        super().__init__(d_model, pixels)
        self.n1 = n_freq + 1
        self.mode, self.gamma = mode, gamma
        self.per_pixel = 2 * self.n1 + (2 if mode == "real" else 0)
        self.proj = nn.Linear(d_model, pixels * self.per_pixel)
        with torch.no_grad():
            nn.init.normal_(self.proj.weight, std=init_std * 0.01)
            bias = torch.zeros(pixels, self.per_pixel)
            bias[:, 0] = 1.0  # Re a_0
            if mode == "real":
                half = (LEVELS - 1) / 2
                bias[:, -2] = half + math.log(-math.expm1(-half))  # softplus^-1(8): s ≈ 8
                bias[:, -1] = half  # t = 8, the midpoint
            self.proj.bias.copy_(bias.flatten())

    def params(self, h):
        z = self.proj(h).float().unflatten(-1, (self.pixels, self.per_pixel))  # (..., P, 2(N+1)[+2])
        ar, ai = z[..., : self.n1], z[..., self.n1 : 2 * self.n1]
        if self.mode == "real":
            return ar, ai, F.softplus(z[..., -2]) + 1e-3, z[..., -1]
        return ar, ai, None, None

    def log_pmf(self, h):
        ar, ai, s, t = self.params(h)
        if self.mode == "real":
            return fbdm.log_pmf_real(ar, ai, s, t, LEVELS)
        return fbdm.log_pmf_unit(ar, ai, LEVELS)

    def penalty(self, h):
        if not self.gamma:
            return h.new_zeros(())
        ar, ai, _, _ = self.params(h)
        return self.gamma * fbdm.smoothness(ar, ai).mean()


def build_head(kind: str, d_model: int, pixels: int, n_freq: int = 16, mode: str = "real",
               gamma: float = 1e-4) -> ImageHead:
    if kind == "categorical":
        return CategoricalHead(d_model, pixels)
    if kind == "fbdm":
        return FBDMHead(d_model, pixels, n_freq, mode, gamma)
    raise ValueError(f"unknown image head '{kind}'; available: categorical, fbdm")
