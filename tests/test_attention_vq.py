"""Transformer-VQ (SPEC §10, "How to test"): the linear block form equals quadratic softmax attention
over the quantized keys with the same local bias and mask (float64); it does not depend on the block
length; a codebook holding every key gives plain softmax attention; STE and EMA are exact; the
commitment loss and codebook perplexity are what they claim."""

import math

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig, load_variants
from lmlab.model import kernels
from lmlab.model.attention import vq_kernels as vqk
from lmlab.registry import ATTENTION, POS

load_variants()
F64 = torch.float64


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def problem(B=2, H=2, T=48, D=5, Dv=3, S=6, w=8, seed=0):
    q, k, v = rand(B, H, T, D, seed=seed), rand(B, H, T, D, seed=seed + 1), rand(B, H, T, Dv, seed=seed + 2)
    C, bias = rand(H, S, D, seed=seed + 3), rand(H, w, seed=seed + 4)
    return q, k, v, C, bias


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_linear_equals_quadratic_over_quantized_keys(seed):
    q, k, v, C, bias = problem(seed=seed)  # n = 48, l = 8, S = 6 as in SPEC §10
    z, khat, _ = vqk.quantize(k, C)
    ref = vqk.vq_attention_quadratic(q, khat, v, bias, scale=0.4)
    lin = vqk.vq_attention_blocks(q, khat, z, v, C, bias, block_len=8, scale=0.4)
    torch.testing.assert_close(lin, ref, rtol=0, atol=1e-12)
    # and the reference really is the dense formula softmax(q k̂ᵀ·s + B + M) v
    T = q.shape[2]
    i = torch.arange(T)
    delta = i[:, None] - i[None, :]
    Bm = torch.where((delta >= 0) & (delta < 8), bias[:, delta.clamp(0, 7)], torch.zeros((), dtype=F64))
    att = (q @ khat.transpose(-1, -2) * 0.4 + Bm).masked_fill(delta < 0, float("-inf")).softmax(-1)
    torch.testing.assert_close(ref, att @ v, rtol=0, atol=1e-12)


def test_output_does_not_depend_on_block_length():
    q, k, v, C, bias = problem(w=4)
    z, khat, _ = vqk.quantize(k, C)
    outs = [vqk.vq_attention_blocks(q, khat, z, v, C, bias, block_len=bl, scale=0.4) for bl in (4, 6, 8, 16, 48)]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=0, atol=1e-12)


def test_codebook_holding_every_key_gives_plain_softmax_attention():
    q, k, v, _, bias = problem(B=1, T=40)
    C = k[0].clone()  # (H, S=T, D): every key is a codeword
    z, khat, _ = vqk.quantize(k, C)
    assert torch.equal(z[0], torch.arange(40).expand(2, 40))
    lin = vqk.vq_attention_blocks(q, khat, z, v, C, bias, block_len=8, scale=0.4)
    i = torch.arange(40)
    plain = kernels.attention(q, k, v, bias=vqk.local_bias(bias, i, i)[None], scale=0.4, impl="manual")
    torch.testing.assert_close(lin, plain, rtol=0, atol=1e-12)
    # without a bias it is torch's causal scaled_dot_product_attention
    lin0 = vqk.vq_attention_blocks(q, khat, z, v, C, torch.zeros_like(bias), block_len=8, scale=0.4)
    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.4)
    torch.testing.assert_close(lin0, sdpa, rtol=0, atol=1e-12)


def test_linear_form_gives_queries_and_values_the_quadratic_gradients():
    # The forward values are equal; gradients to q and v are too (codes enter through C = k̂).
    # Keys of blocks <= i-2 get no gradient in the linear form (SPEC §10 pitfall), so k is not compared.
    q, k, v, C, bias = problem(T=32)
    z, khat, _ = vqk.quantize(k, C)
    g = rand(*v.shape, seed=9)
    grads = []
    for fn in (lambda a, b: vqk.vq_attention_quadratic(a, khat, b, bias, 0.4),
               lambda a, b: vqk.vq_attention_blocks(a, khat, z, b, C, bias, 8, 0.4)):
        a, b = q.clone().requires_grad_(), v.clone().requires_grad_()
        (fn(a, b) * g).sum().backward()
        grads.append((a.grad, b.grad))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-11)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=1e-11)


def test_straight_through_estimator():
    _, k, _, C, _ = problem()
    k.requires_grad_()
    z, khat, ck = vqk.quantize(k, C)
    assert torch.equal(khat, ck)  # forward value is exactly the codeword
    d = ((k[..., None, :] - C[None, :, None]) ** 2).sum(-1)  # (B, H, T, S) brute-force distances
    assert torch.equal(z, d.argmin(-1))
    g = rand(*k.shape, seed=7)
    (khat * g).sum().backward()
    assert torch.equal(k.grad, g)  # identity gradient


def test_aggregates_reproduce_summing_exp_per_key():
    # exp(q·C_s + log n_s)·Ū_s summed over codes = Σ_j exp(q·k̂_j) v_j (the log-count form, SPEC §10)
    q, k, v, C, _ = problem(B=1, T=30)
    z, khat, _ = vqk.quantize(k, C)
    U, n = vqk.aggregate(z, v, C.shape[1])
    e = torch.exp(torch.einsum("bhtd,hsd->bhts", q, C) + n.log()[:, :, None])
    lhs = e @ (U / n.clamp(min=1)[..., None])
    rhs = torch.exp(q @ khat.transpose(-1, -2)) @ v
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ the layer


def make(T_model=64, **kw):
    mc = ModelConfig(d_model=32, n_head=4, n_layer=1, seq_len=T_model)
    p = POS.get("none")(POS.get("none").Config(), mc)
    torch.manual_seed(0)
    cfg = ATTENTION.get("vq").Config(**{"codebook_size": 8, "block_len": 4, "window": 3, **kw})
    layer = ATTENTION.get("vq")(cfg, mc, p).double()
    with torch.no_grad():
        layer.local_bias.normal_()
    return layer, p


def test_layer_linear_equals_quadratic_with_padding():
    layer, p = make()
    layer.eval()
    x = rand(2, 23, 32)  # 23 is not a multiple of the block length
    P = p.default_positions(2, 23).double()
    lin = layer(x, P)
    layer.cfg.form = "quadratic"
    torch.testing.assert_close(lin, layer(x, P), rtol=0, atol=1e-12)


def test_ema_update_commitment_loss_and_training_only():
    layer, p = make(beta=0.5, gamma=0.9)
    x = rand(2, 13, 32, seed=3)
    P = p.default_positions(2, 13).double()
    C0, s0, n0 = layer.codebook().clone(), layer.code_sum.clone(), layer.code_count.clone()
    k = layer.kv_proj(x).view(2, 13, 2, 4, 8)[:, :, 0].transpose(1, 2)  # (B, H, T, D)
    k = F.layer_norm(k, (8,)).detach()
    z = ((k[..., None, :] - C0[None, :, None]) ** 2).sum(-1).argmin(-1)  # (B, H, T)
    layer.eval()
    layer(x, P)
    assert torch.equal(layer.code_sum, s0) and torch.equal(layer.code_count, n0)  # eval: no update
    layer.train()
    layer(x, P)
    for h in range(4):
        for s in range(8):
            sel = z[:, h] == s
            exp_n = 0.9 * n0[h, s] + 0.1 * sel.sum().double()
            exp_sum = 0.9 * s0[h, s] + 0.1 * k[:, h][sel].sum(0)
            torch.testing.assert_close(layer.code_count[h, s], exp_n, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(layer.code_sum[h, s], exp_sum, rtol=1e-12, atol=1e-12)
    commit = ((k - C0[torch.arange(4)[None, :, None], z]) ** 2).sum(-1).sum(1).mean()
    torch.testing.assert_close(layer.aux_loss, 0.5 * commit, rtol=1e-12, atol=1e-12)
    assert all(name != "code_sum" for name, _ in layer.named_parameters())  # buffers, not parameters


def test_codebook_perplexity():
    layer, p = make(codebook_size=16)
    layer.eval()
    x = rand(1, 16, 32, seed=4)
    P = p.default_positions(1, 16).double()
    with torch.no_grad():  # codebook := this input's keys -> every token its own code: perplexity 16
        k = layer.kv_proj(x).view(1, 16, 2, 4, 8)[0, :, 0].transpose(0, 1)  # (H, T, D)
        layer.code_sum.copy_(F.layer_norm(k, (8,)))
        layer.code_count.fill_(1.0)
    layer(x, P)
    assert math.isclose(layer.metrics()["codebook_perplexity"], 16.0, rel_tol=1e-9)
    with torch.no_grad():  # one codeword at the origin, the rest far away -> perplexity 1
        layer.code_sum.fill_(100.0)
        layer.code_sum[:, 3] = 0.0
    layer(x, P)
    assert math.isclose(layer.metrics()["codebook_perplexity"], 1.0, rel_tol=1e-9)


def test_gradients_reach_every_parameter():
    layer, p = make()
    layer.train()
    x = rand(2, 21, 32)
    P = p.default_positions(2, 21).double()
    (layer(x, P).pow(2).sum() + layer.aux_loss).backward()
    for name, prm in layer.named_parameters():
        assert prm.grad is not None and prm.grad.abs().sum() > 0, name
