"""The image-text model: causality over patches, exact reference heads, positions and generation alignment."""

import math

import pytest
import torch

from lmlab.model.pos.assign import assign_for
from lmlab.multimodal import digits, metrics
from lmlab.multimodal.digits import GENERATE, PATCH, UNDERSTAND
from lmlab.multimodal.model import ImageTextModel

TINY = ["data=digits", "task=image_text", "model.d_model=32", "model.n_layer=2", "model.n_head=4", "model.seq_len=64",
        "model.mlp=gelu", "model.dropout=0.0"]


@pytest.fixture(scope="module")
def val():
    return digits.load_split()["val"]


def build(compose, *extra, seed=0):
    torch.manual_seed(seed)
    return ImageTextModel(compose([*TINY, *extra])).eval()


def batch_of(val, n=4, patch=2, direction=GENERATE):
    images, labels = val
    return digits.eval_batches(images[:n], labels[:n], patch, n, directions=(direction,))[0]


@pytest.mark.parametrize("pos,head", [(p, "categorical") for p in (
    "rope", "rope2d", "rope_tie", "rope_tie_v2", "mrope", "learned", "alibi")] + [("rope_tie_v2", "fbdm")])
def test_perturbing_patch_j_leaves_every_earlier_prediction_unchanged(compose, val, pos, head):
    model = build(compose, f"pos={pos}", f"task.image_head={head}")
    for direction in (UNDERSTAND, GENERATE):
        b = batch_of(val, direction=direction)
        j = 5
        b2 = dict(b, patches=b["patches"].clone())
        b2["patches"][:, j] = 16 - b2["patches"][:, j]  # every row changes at patch j
        with torch.no_grad():
            o1, o2 = model.losses(b), model.losses(b2)
        slot = torch.nonzero(b["is_image"][0])[j].item()  # the slot that holds patch j
        # text logits at every slot before patch j's slot, image predictions of patches 0..j
        assert torch.equal(o1["logits"][:, :slot], o2["logits"][:, :slot])
        assert torch.equal(o1["img_nll"][:, :j], o2["img_nll"][:, :j])
        assert torch.equal(o1["h_img"][:, : j + 1], o2["h_img"][:, : j + 1])  # h_img[j] predicts patch j
        # and the perturbation is seen from patch j's slot on (the test is not vacuous)
        assert not torch.allclose(o1["logits"][:, slot:], o2["logits"][:, slot:])
        assert not torch.allclose(o1["h_img"][:, j + 1 :], o2["h_img"][:, j + 1 :])


def test_zeroed_categorical_head_gives_exactly_log2_17_bits_per_pixel(compose, val):
    model = build(compose, "task.image_head=categorical")
    torch.nn.init.zeros_(model.image_head.proj.weight)
    torch.nn.init.zeros_(model.image_head.proj.bias)
    m = metrics.evaluate(model, digits.eval_batches(*val, 2, 48))
    assert m["img_bpp_uncond"] == pytest.approx(math.log2(17), abs=1e-6)
    assert m["img_bpp_cond"] == pytest.approx(math.log2(17), abs=1e-6)


@pytest.mark.parametrize("mode,n", [("real", 16), ("unit", 34)])
def test_fbdm_head_pmfs_sum_to_one(compose, val, mode, n):
    model = build(compose, "task.image_head=fbdm", f"task.fbdm_mode={mode}", f"task.fbdm_n={n}")
    head = model.image_head
    h = torch.randn(3, 5, 32) * 3
    pmf = head.log_pmf(h).double().exp()  # (3, 5, P, 17)
    assert (pmf >= 0).all() and (pmf.sum(-1) - 1).abs().max() < 1e-5
    # a_0 = 1 and every other coefficient 0: the uniform density on the circle; still a pmf
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.view(head.pixels, -1)[:, : 2 * head.n1] = 0
        head.proj.bias.view(head.pixels, -1)[:, 0] = 1
    pmf0 = head.log_pmf(h).double().exp()
    assert (pmf0.sum(-1) - 1).abs().max() < 1e-6
    if mode == "unit":  # uniform on [-1, 1] with 17 equal bins: exactly log2(17) bits
        assert torch.allclose(pmf0, torch.full_like(pmf0, 1 / 17), atol=1e-6)


@pytest.mark.parametrize("pos", ["rope", "rope_tie_v2", "mrope"])
def test_model_positions_come_from_the_assigner_and_stay_float(compose, val, pos):
    model = build(compose, f"pos={pos}")
    b = batch_of(val, n=6)
    P = model.positions(b["layouts"], b["tokens"].shape[1])
    assert P.dtype == torch.float32 and P.shape[-1] == model.transformer.pos.n_axes
    for r, lay in enumerate(b["layouts"]):
        ref = assign_for(model.transformer.pos, lay.segments())
        assert torch.equal(P[r, : len(ref)], ref)
    if pos == "rope":  # the flattened baseline: 0..T-1
        assert torch.equal(P[0, :, 0], torch.arange(P.shape[1], dtype=torch.float32))
    if pos == "rope_tie_v2":  # v2 (SPEC §8): the image sits (wh-h)/2 = 6 past [IMG]; next text at L + wh + 1
        L = b["layouts"][0].cap_len + 1  # [BOS] caption [IMG]: [IMG] is at position cap_len + 1
        img = P[0, b["is_image"][0]]
        assert torch.equal(img[0], torch.tensor([L + 7.0, L + 7.0]))
        assert torch.equal(P[0, L + 17], torch.tensor([L + 17.0, L + 17.0]))


def test_generation_feeds_samples_back_exactly_as_in_training(compose, val):
    """The hidden state that drew patch j during generation equals the teacher-forced state that
    predicts patch j on the finished sequence (right slot, same input map)."""
    model = build(compose, "pos=rope2d", "task.image_head=fbdm")
    seen = []
    orig = model.image_head.sample

    def spy(h, generator=None, temperature=1.0):
        seen.append(h.clone())
        return orig(h, generator, temperature)

    model.image_head.sample = spy
    caps = [digits.caption(digits.EVAL_TEMPLATE, y) for y in (1, 7, 3)]
    imgs = model.generate_images(caps, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (3, 8, 8) and imgs.min() >= 0 and imgs.max() <= 16
    exs = [digits.encode(c, digits.patchify(imgs[i].numpy(), 2), GENERATE) for i, c in enumerate(caps)]
    b = digits.collate(exs, (4, 4))
    with torch.no_grad():
        h_img = model.losses(b)["h_img"]  # (3, 16, C)
    # rows are decoded in groups of equal caption length, shortest first ("one" | "seven", "three"),
    # each group through the KV cache, one head call per patch
    groups = [[0], [1, 2]]
    assert [len(c) for c in caps][0] < len(caps[1]) == len(caps[2])
    assert len(seen) == 16 * len(groups)
    for g, rows in enumerate(groups):
        for j in range(16):
            torch.testing.assert_close(seen[16 * g + j], h_img[rows, j], rtol=1e-5, atol=1e-5)
    assert (b["role"] == PATCH).sum() == 3 * 16


def test_image_sampling_with_the_cache_equals_the_uncached_reference(compose):
    """The sampler runs on the shared decoding loop: with the KV cache it draws exactly the images the
    full re-run draws from the same generator (captions of two lengths, so two groups)."""
    model = build(compose, "pos=rope2d", "task.image_head=fbdm")
    caps = [digits.caption(digits.EVAL_TEMPLATE, y) for y in (1, 7, 3)]
    cached = model.generate_images(caps, generator=torch.Generator().manual_seed(3))
    full = model.generate_images(caps, generator=torch.Generator().manual_seed(3), use_cache=False)
    assert torch.equal(cached, full)
    other = model.generate_images(caps, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(cached, other)  # the seed matters, so equality above is not vacuous


def _gauss_bin_mass(mu: float, sigma: float, v: int) -> float:
    """Reference discretized Gaussian by math.erf: bin [v-1/2, v+1/2], outer bins open."""
    cdf = lambda x: 0.5 * (1 + math.erf((x - mu) / (sigma * math.sqrt(2))))  # noqa: E731
    lo = 0.0 if v == 0 else cdf(v - 0.5)
    hi = 1.0 if v == 16 else cdf(v + 0.5)
    return hi - lo


def test_mse_head_scores_a_discretized_gaussian_with_one_sigma(compose):
    model = build(compose, "task.image_head=mse")
    head = model.image_head
    h = torch.randn(2, 3, 32) * 2
    with torch.no_grad():
        head.log_sigma.fill_(math.log(1.7))
    pmf = head.log_pmf(h).double().exp()  # (2, 3, P, 17)
    assert (pmf.sum(-1) - 1).abs().max() < 1e-6
    mu = head.mean_levels(h)  # (2, 3, P) level units
    for idx in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        ref = [_gauss_bin_mass(float(mu[idx]), 1.7, v) for v in range(17)]
        torch.testing.assert_close(pmf[idx], torch.tensor(ref, dtype=torch.float64), rtol=1e-5, atol=1e-9)
    # far tails stay finite (no log 0): a mean far below 0 puts ~all mass on level 0
    from lmlab.multimodal.heads import discretized_gaussian_log_pmf

    far = discretized_gaussian_log_pmf(torch.tensor([-40.0, 60.0]), torch.tensor(1.0))
    assert far.isfinite().all() and far[0, 0] > -1e-9 and far[1, 16] > -1e-9


def test_mse_head_trains_the_mean_by_squared_error_and_sigma_by_likelihood(compose):
    """The control must be pure regression: the gradient reaching the trunk and the mean projection is
    exactly that of the squared error in input units, and σ alone is fit by the discretized NLL."""
    model = build(compose, "task.image_head=mse")
    model.train()
    head = model.image_head
    h = torch.randn(4, 5, 32, requires_grad=True)
    levels = torch.randint(0, 17, (4, 5, head.pixels))
    nll = head.nll(h, levels)
    loss = head.train_loss(h, levels, nll).sum()
    loss.backward()
    g_h, g_w, g_s = h.grad.clone(), head.proj.weight.grad.clone(), head.log_sigma.grad.clone()
    h.grad = None
    head.zero_grad()
    mse = ((head.proj(h) - digits.to_input(levels.float())) ** 2).sum()
    mse.backward()
    torch.testing.assert_close(g_h, h.grad)
    torch.testing.assert_close(g_w, head.proj.weight.grad)
    assert head.log_sigma.grad is None or float(head.log_sigma.grad) == 0.0  # squared error ignores σ
    assert float(g_s) != 0.0  # ... and the NLL term moves σ


def test_mse_head_sigma_converges_to_the_generating_sigma(compose):
    """Fit only σ on levels drawn from a discretized N(8, 2.5²) with the mean fixed at 8: the learned σ
    recovers 2.5 (a wrong bin width, unit or tail treatment would not)."""
    model = build(compose, "task.image_head=mse")
    head = model.image_head
    g = torch.Generator().manual_seed(0)
    levels = (8 + 2.5 * torch.randn(20000, generator=g)).round().clamp(0, 16).long().view(-1, 1).expand(-1, head.pixels)
    with torch.no_grad():
        head.proj.weight.zero_()
        head.proj.bias.zero_()  # input 0 = level 8
    h = torch.zeros(levels.shape[0], 32)
    opt = torch.optim.Adam([head.log_sigma], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        head.train_loss(h, levels, head.nll(h, levels)).mean().backward()
        opt.step()
    assert float(head.log_sigma.exp()) == pytest.approx(2.5, rel=0.03)


def test_mse_head_runs_through_the_model_losses(compose, val):
    """img_nll is the exact bits of the Gaussian scoring (comparable to the other heads); the model
    returns the regression objective apart (img_loss), the other heads return None there."""
    model = build(compose, "task.image_head=mse")
    b = batch_of(val)
    with torch.no_grad():
        out = model.losses(b)
        ref = -model.image_head.log_pmf(out["h_img"]).gather(-1, b["patches"][..., None]).squeeze(-1)
    torch.testing.assert_close(out["img_nll"], ref)
    assert out["img_loss"] is not None and not torch.allclose(out["img_loss"], out["img_nll"])
    cat = build(compose, "task.image_head=categorical")
    with torch.no_grad():
        assert cat.losses(b)["img_loss"] is None
