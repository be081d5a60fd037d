"""Image output heads: one hidden state -> a distribution over the 17 levels of each pixel of the next patch.

Pixels inside a patch are conditionally independent given the prefix (SPEC §15.3); p = 1 is exact
pixel-level autoregression. Every head exposes the same four things, all per pixel:

- ``log_pmf(h)``: (..., P, 17) log-probabilities of the levels, summing to 1 exactly (up to rounding);
- ``nll(h, levels)``: (..., P) negative log-likelihood in nats of the observed levels -- what every
  reported bits/pixel figure is, for every head, so the heads are compared on one exact scale;
- ``train_loss(h, levels, nll)``: (..., P) what training minimizes per pixel (the NLL itself for
  ``categorical`` and ``fbdm``; the regression objective for ``mse``);
- ``penalty(h)``: a scalar regularizer added to the loss (0 for the categorical head).

Sampling draws a level from ``log_pmf`` (exact for both heads, since FBDM's bin masses are exact).

- ``categorical``: a linear layer to P·17 logits. A zeroed head gives exactly log2(17) bits/pixel.
- ``fbdm`` (SPEC §14): a linear layer to P·(2(N+1)+2) numbers per pixel read as (Re a, Im a, raw s, t).
  ``mode=real`` (default): real-line bins [v-½, v+½] with the outer bins opened to ±∞, no bandwidth
  floor (pitfalls 4-5). Init per the SPEC §14 table: weights ×0.01, a_0 bias 1, s ≈ half the range
  (8 levels), t = the midpoint (8) -- it starts near 4 bits/pixel, not at the 1e-12 clamp (pitfall 9).
  ``mode=unit``: 17 equal bins tiling [-1, 1] (use N ≥ 2·17 = 34, pitfall 4). The smoothness penalty
  γ·∫|p'|² on the normalized coefficients (scale-free, pitfall 6).
- ``mse`` (SPEC §15.3's negative control for S24's argument that MSE is a fixed-σ Gaussian): a linear
  layer to one mean μ per pixel (in the model's input units, 2v/16 - 1), trained by plain squared
  error on the input-unit target, i.e. pure regression. It is *scored* as a discretized Gaussian
  N(μ, σ²) over the 17 level bins [v-½, v+½] (outer bins open to ±∞, so the pmf sums to 1 exactly)
  with one learned σ for all pixels; σ is fit by that pmf's NLL with μ detached, so it is the
  maximum-likelihood σ for the current means and never changes what μ learns. Its bits/pixel are
  therefore exact likelihoods on the same bins as the other heads'. Sampling draws from that pmf.
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

    def train_loss(self, h: torch.Tensor, levels: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
        """Per-pixel training objective (..., P); ``nll`` is ``self.nll(h, levels)``, already computed."""
        return nll

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


def _log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) - Φ(a)) for a < b without cancellation: computed in the lower tail (reflecting
    through 0 when the interval lies above it), log Φ(b) + log1p(-exp(log Φ(a) - log Φ(b)))."""
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    lhi, llo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lhi + torch.log1p(-torch.exp(llo - lhi).clamp(max=1 - 1e-16))


def discretized_gaussian_log_pmf(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """(...,) means and σ (broadcastable), both in level units -> (..., 17) log-masses of the bins
    [v-½, v+½] for v = 0..16 with the outer bins open (so the masses sum to 1 up to rounding)."""
    mu = mu.double()[..., None]
    sigma = sigma.double()
    edges = torch.arange(LEVELS + 1, dtype=torch.float64, device=mu.device) - 0.5  # -0.5 .. 16.5
    # the open outer bins end 10^4 levels out instead of at ±inf: the same masses in float64 for any
    # mean the head can reach, and no inf - inf in the gradient (torch.where differentiates both branches)
    edges[0], edges[-1] = -1e4, 1e4
    z = (edges - mu) / sigma[..., None] if sigma.dim() else (edges - mu) / sigma
    return _log_diff_ndtr(z[..., :-1], z[..., 1:])


class MSEHead(ImageHead):
    """Regression control: μ per pixel by squared error, scored as a discretized Gaussian, one learned σ."""

    def __init__(self, d_model: int, pixels: int, init_sigma: float = 4.0):
        super().__init__(d_model, pixels)
        self.proj = nn.Linear(d_model, pixels)  # μ in input units (2v/16 - 1)
        self.log_sigma = nn.Parameter(torch.tensor(math.log(init_sigma)))  # σ in level units

    def mean_levels(self, h: torch.Tensor) -> torch.Tensor:
        """(..., C) -> (..., P) predicted means in level units."""
        from lmlab.multimodal.digits import from_input

        return from_input(self.proj(h).float())

    def log_pmf(self, h, detach_mean: bool = False):
        mu = self.mean_levels(h)
        if detach_mean:
            mu = mu.detach()
        return discretized_gaussian_log_pmf(mu, self.log_sigma.exp()).float()

    def train_loss(self, h, levels, nll):
        from lmlab.multimodal.digits import to_input

        sq = (self.proj(h).float() - to_input(levels.float())) ** 2  # the regression loss on μ only
        sigma_nll = -self.log_pmf(h, detach_mean=True).gather(-1, levels[..., None]).squeeze(-1)  # σ only
        return sq + sigma_nll


HEADS = ("categorical", "fbdm", "mse")


def build_head(kind: str, d_model: int, pixels: int, n_freq: int = 16, mode: str = "real",
               gamma: float = 1e-4) -> ImageHead:
    if kind == "categorical":
        return CategoricalHead(d_model, pixels)
    if kind == "fbdm":
        return FBDMHead(d_model, pixels, n_freq, mode, gamma)
    if kind == "mse":
        return MSEHead(d_model, pixels)
    raise ValueError(f"unknown image head '{kind}'; available: {', '.join(HEADS)}")
