"""Properties of the Transformer and its default parts: causality, RoPE's relative property,
cached decoding, and that a tiny model can fit one batch."""

import torch

from lmlab.config import ModelConfig
from lmlab.model.attention.base import AttentionConfig
from lmlab.model.pos.rotary import RotaryConfig
from lmlab.model.transformer import Transformer
from lmlab.registry import POS


def tiny(pos="rope", **kw):
    torch.manual_seed(0)
    mc = ModelConfig(d_model=32, n_layer=2, n_head=4, seq_len=16, **kw)
    pos_cfg = POS.get(pos).Config(name=pos)
    return Transformer(mc, AttentionConfig(name="mha"), pos_cfg, vocab_size=50).double()


def test_causality():
    m = tiny().eval()
    x = torch.randint(0, 50, (2, 12))
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % 50
    a, b = m(x), m(y)
    torch.testing.assert_close(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_rope_logits_depend_only_on_relative_position():
    rope = POS.get("rope")(RotaryConfig(), ModelConfig())
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)

    def logit(m, n):
        pm = torch.full((1, 1, 1), float(m), dtype=torch.float64)
        pn = torch.full((1, 1, 1), float(n), dtype=torch.float64)
        return (rope.rotate(q, pm) * rope.rotate(k, pn)).sum()

    assert torch.allclose(logit(3, 10), logit(103, 110), atol=1e-12)
    assert torch.allclose(logit(0, 0), (q * k).sum(), atol=1e-12)  # R_0 = I
    assert not torch.allclose(logit(3, 10), logit(3, 11))
    # norm preserved
    p = torch.full((1, 1, 1), 5.0, dtype=torch.float64)
    assert torch.allclose(rope.rotate(q, p).norm(), q.norm())


def test_rope_elementwise_equals_explicit_rotation_matrix():
    rope = POS.get("rope")(RotaryConfig(base=100.0), ModelConfig())
    d, n = 8, 3.0
    x = torch.randn(1, 1, 1, d, dtype=torch.float64)
    R = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        th = n * 100.0 ** (-2 * i / d)
        c, s = torch.cos(torch.tensor(th)), torch.sin(torch.tensor(th))
        R[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, -s], [s, c]])
    out = rope.rotate(x, torch.full((1, 1, 1), n, dtype=torch.float64))
    torch.testing.assert_close(out[0, 0, 0], R @ x[0, 0, 0])


def test_rotate_half_equals_interleaved_after_permutation():
    inter = POS.get("rope")(RotaryConfig(layout="interleaved"), ModelConfig())
    half = POS.get("rope")(RotaryConfig(layout="half"), ModelConfig())
    d = 12
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # interleaved -> half layout
    x = torch.randn(2, 3, 5, d, dtype=torch.float64)
    pos = torch.arange(5, dtype=torch.float64)[None, :, None].expand(2, 5, 1)
    torch.testing.assert_close(inter.rotate(x, pos)[..., perm], half.rotate(x[..., perm], pos))


def test_cached_decoding_equals_full_forward():
    m = tiny().eval()
    x = torch.randint(0, 50, (2, 10))
    full = m(x)
    caches = m.new_caches()
    steps = [m(x[:, :4], caches=caches)] + [m(x[:, t : t + 1], caches=caches) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(steps, 1), full)
    assert m.cache_elems_per_token() == 2 * 2 * 4 * 8  # layers x (k, v) x heads x head_dim


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(d_model=64, n_layer=2, n_head=4, seq_len=32), AttentionConfig(),
                    RotaryConfig(), vocab_size=64)
    x = torch.randint(0, 64, (4, 33))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1, loss.item()  # from ln(64) = 4.16


def test_learned_positions_table_too_short_is_an_error():
    m = tiny(pos="learned").eval()
    import pytest

    with pytest.raises(ValueError, match="beyond pos.max_len=16"):
        m(torch.randint(0, 50, (1, 20)))


def test_sdpa_and_manual_models_agree():
    torch.manual_seed(0)
    mc = ModelConfig(d_model=32, n_layer=2, n_head=4, seq_len=16)
    a = Transformer(mc, AttentionConfig(impl="sdpa"), RotaryConfig(), 50).double().eval()
    b = Transformer(mc, AttentionConfig(impl="manual"), RotaryConfig(), 50).double().eval()
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50, (2, 12))
    torch.testing.assert_close(a(x), b(x))
