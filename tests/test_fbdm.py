"""SPEC §14 checks of the Fourier Basis Density Model, in float64 against independent quadratures."""

import math

import numpy as np
import pytest
import torch

from lmlab.multimodal import fbdm

D = torch.float64


def rand_a(n, batch=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, n + 1, generator=g, dtype=D), torch.randn(*batch, n + 1, generator=g, dtype=D)


def series_density(ar, ai, x):
    """The ½ + Re Σ (c_n/c_0) e^{iπnx} form with complex numbers, independent of the |A|² code path."""
    a = (ar + 1j * ai).numpy()
    N = len(a) - 1
    c = np.array([np.sum(a[: N + 1 - n] * np.conj(a[n:])) for n in range(N + 1)])
    n = np.arange(1, N + 1)
    return 0.5 + np.real(np.exp(1j * np.pi * np.outer(x, n)) @ (c[1:] / c[0].real))


@pytest.mark.parametrize("n", [1, 5, 16, 24])
def test_density_matches_series_nonnegative_and_integrates_to_one(n):
    ar, ai = rand_a(n, seed=n)
    x = torch.linspace(-1, 1, 20001, dtype=D)
    p = fbdm.density_unit(ar, ai, x)
    assert p.min() >= 0
    np.testing.assert_allclose(p.numpy(), series_density(ar, ai, x.numpy()), atol=1e-12)
    xs, ws = np.polynomial.legendre.leggauss(400)
    integral = (fbdm.density_unit(ar, ai, torch.tensor(xs)) * torch.tensor(ws)).sum()
    assert abs(integral.item() - 1) < 1e-10


def test_real_line_density_integrates_to_one():
    ar, ai = rand_a(12, seed=3)
    s, t = torch.tensor(1.7, dtype=D), torch.tensor(0.4, dtype=D)
    y = torch.linspace(-60, 60, 120001, dtype=D)
    q = fbdm.log_prob(ar, ai, s, t, y).exp()
    assert abs(torch.trapezoid(q, y).item() - 1) < 1e-6


def test_cdf_monotone_from_zero_to_one_and_matches_quadrature():
    ar, ai = rand_a(16, seed=1)
    x = torch.linspace(-1, 1, 20001, dtype=D)
    P = fbdm.cdf_unit(ar, ai, x)
    assert abs(P[0].item()) < 1e-12 and abs(P[-1].item() - 1) < 1e-12
    assert (P.diff() >= -1e-15).all()
    p = fbdm.density_unit(ar, ai, x)
    cum = torch.cat((torch.zeros(1, dtype=D), torch.cumulative_trapezoid(p, x)))
    assert (P - cum).abs().max() < 1e-6


@pytest.mark.parametrize("mode", ["unit", "real"])
def test_bin_masses_sum_to_one_and_match_quadrature(mode):
    ar, ai = rand_a(16, batch=(5,), seed=2)
    if mode == "unit":
        logm = fbdm.log_pmf_unit(ar, ai, 17)
        edges = torch.linspace(-1, 1, 18, dtype=D)
    else:
        s, t = torch.full((5,), 4.0, dtype=D), torch.full((5,), 8.0, dtype=D)
        logm = fbdm.log_pmf_real(ar, ai, s, t, 17)
        edges = fbdm.bin_edges_unit(s, t, 17)[0]
    m = logm.exp()
    assert (m >= 0).all()
    assert (m.sum(-1) - 1).abs().max() < 1e-12
    # each mass against Gauss-Legendre quadrature of the density over its bin (row 0)
    xs, ws = np.polynomial.legendre.leggauss(200)
    for j in range(17):
        lo, hi = edges[j].item(), edges[j + 1].item()
        xq = torch.tensor((hi - lo) / 2 * xs + (hi + lo) / 2)
        quad = ((hi - lo) / 2 * torch.tensor(ws) * fbdm.density_unit(ar[0], ai[0], xq)).sum()
        assert abs(quad.item() - m[0, j].item()) < 1e-10


def test_smoothness_penalty_equals_quadrature_of_derivative_squared():
    ar, ai = rand_a(8, seed=4)
    x = torch.linspace(-1, 1, 200001, dtype=D, requires_grad=True)
    p = fbdm.density_unit(ar, ai, x)
    (dp,) = torch.autograd.grad(p.sum(), x)
    quad = torch.trapezoid(dp.detach() ** 2, x.detach())
    assert abs(quad.item() - fbdm.smoothness(ar, ai).item()) < 1e-6 * quad.item()


def test_density_invariant_to_scale_and_conjugate_reversal():
    ar, ai = rand_a(10, seed=5)
    x = torch.linspace(-1, 1, 501, dtype=D)
    p = fbdm.density_unit(ar, ai, x)
    lam = complex(0.3, -1.7)
    a = (ar + 1j * ai) * lam
    np.testing.assert_allclose(fbdm.density_unit(a.real, a.imag, x), p, atol=1e-12)
    rev = torch.conj(torch.flip(ar + 1j * ai, (-1,)))
    np.testing.assert_allclose(fbdm.density_unit(rev.real, rev.imag, x), p, atol=1e-12)


def test_gradients_match_finite_differences():
    ar, ai = rand_a(6, batch=(3,), seed=6)
    s, t = torch.tensor([3.0, 4.0, 6.0], dtype=D), torch.tensor([5.5, 3.0, 8.0], dtype=D)  # masses stay above the clamp
    y = torch.tensor([0.3, 1.0, 11.0], dtype=D)
    args = [v.clone().requires_grad_(True) for v in (ar, ai, s, t)]
    assert torch.autograd.gradcheck(lambda a, b, c, d: fbdm.log_prob(a, b, c, d, y), args)
    assert torch.autograd.gradcheck(lambda a, b, c, d: fbdm.log_pmf_real(a, b, c, d, 17), args)
    lo, hi = torch.tensor([-0.9, 0.1, 0.5], dtype=D), torch.tensor([-0.2, 0.15, 1.0], dtype=D)
    assert torch.autograd.gradcheck(lambda a, b: fbdm.log_mass(a, b, lo, hi), args[:2])


def test_bisection_samples_follow_the_cdf():
    ar, ai = rand_a(8, seed=7)
    g = torch.Generator().manual_seed(0)
    x = fbdm.sample_unit(ar.expand(20000, -1), ai.expand(20000, -1), generator=g)
    xs, _ = x.sort()
    P = fbdm.cdf_unit(ar, ai, xs)
    emp = torch.arange(1, 20001, dtype=D) / 20000
    ks = torch.maximum((emp - P).abs(), (emp - 1 / 20000 - P).abs()).max()
    assert ks < 0.015


def mixture_pdf(x):
    g = lambda m, s: np.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
    return 0.6 * g(-0.45, 0.12) + 0.4 * g(0.4, 0.08)


@pytest.mark.slow
def test_fit_of_bimodal_density_reaches_low_kl():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    comp = rng.random(40000) < 0.6
    draws = np.where(comp, rng.normal(-0.45, 0.12, 40000), rng.normal(0.4, 0.08, 40000))
    data = torch.tensor(draws[np.abs(draws) < 1][:20000])
    model = fbdm.FBDM(n_freq=16, real_line=False, dtype=D)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(600):
        batch = data[torch.randint(len(data), (512,))]
        loss = -model.log_prob(batch).mean() + 1e-4 * model.smoothness()
        opt.zero_grad()
        loss.backward()
        opt.step()
    xs, ws = np.polynomial.legendre.leggauss(400)
    p_true = mixture_pdf(xs)
    p_true = p_true / (ws * p_true).sum()  # truncated to [-1, 1]
    with torch.no_grad():
        log_q = model.log_prob(torch.tensor(xs)).numpy()
    kl = (ws * p_true * (np.log(p_true) - log_q)).sum()
    assert kl < 0.02, kl
