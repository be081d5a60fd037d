"""The position zoo inside the Transformer (MHA): forward/backward, KV-cache parity, causality,
ALiBi slopes and bias, the learned table's range error, and config errors naming keys."""

from types import SimpleNamespace

import pytest
import torch

from lmlab.config import ModelConfig, load_variants
from lmlab.model.attention.base import AttentionConfig
from lmlab.model.pos.alibi import alibi_slopes
from lmlab.model.transformer import Transformer
from lmlab.registry import POS

load_variants()
F64 = torch.float64
NEW = ["rope2d", "rope_tie", "rope_tie_v2", "mrope", "alibi"]
SEGMENTS = [("text", 3), ("image", 2, 3), ("text", 2), ("image", 2, 2), ("text", 3)]  # 18 slots
V = 37


def make_model(name, d_model=32, n_head=2, **kw):
    torch.manual_seed(0)
    mcfg = ModelConfig(d_model=d_model, n_head=n_head, n_layer=2, seq_len=32)
    return Transformer(mcfg, AttentionConfig(name="mha"), POS.get(name).Config(**kw), V).double().eval()


def positions_for(model, explicit, B=2, T=18):
    if not explicit:
        return None
    return model.pos.assign(SEGMENTS).to(F64)[None].expand(B, T, -1)


@pytest.mark.parametrize("name", NEW)
def test_forward_backward(name):
    model = make_model(name).train()
    idx = torch.randint(0, V, (2, 18))
    for positions in (None, positions_for(model, True)):
        model.zero_grad()
        logits = model(idx, positions)
        assert logits.shape == (2, 18, V)
        torch.nn.functional.cross_entropy(logits.reshape(-1, V), idx.reshape(-1)).backward()
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.blocks[0].attn.q_proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("explicit", [False, True], ids=["text", "image"])
@pytest.mark.parametrize("impl", ["sdpa", "manual"])
def test_cached_decoding_equals_full_pass(name, explicit, impl):
    # Prefill 7 slots, then chunks of 1, 3 and the rest: every row equals the full forward pass.
    torch.manual_seed(0)
    mcfg = ModelConfig(d_model=32, n_head=2, n_layer=2, seq_len=32)
    model = Transformer(mcfg, AttentionConfig(name="mha", impl=impl), POS.get(name).Config(), V).double().eval()
    idx = torch.randint(0, V, (2, 18))
    positions = positions_for(model, explicit)
    full = model(idx, positions)
    caches, outs, start = model.new_caches(), [], 0
    for stop in (7, 8, 11, 18):
        p = positions[:, start:stop] if positions is not None else None
        outs.append(model(idx[:, start:stop], p, caches=caches))
        start = stop
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", NEW)
def test_causality(name):
    # Changing token t changes no logits before t (image positions, which are not monotone per axis).
    model = make_model(name)
    positions = positions_for(model, True, B=1)
    idx = torch.randint(0, V, (1, 18))
    base = model(idx, positions)
    for t in (4, 9, 15):
        idx2 = idx.clone()
        idx2[0, t] = (idx[0, t] + 1) % V
        out = model(idx2, positions)
        torch.testing.assert_close(out[:, :t], base[:, :t], atol=0, rtol=0)
        assert not torch.allclose(out[:, t], base[:, t])


def test_alibi_slopes_known_values():
    assert alibi_slopes(8) == [2.0**-k for k in range(1, 9)]  # Press et al.: 1/2 .. 1/256
    assert alibi_slopes(4) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    # not a power of two: the 4-head slopes, then every other 8-head slope
    assert alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]


def test_alibi_bias_values():
    pos = POS.get("alibi")(POS.get("alibi").Config(), ModelConfig(d_model=32, n_head=8))
    q_pos = torch.tensor([[[5.0], [6.0]]])  # (1, 2, 1): two queries after a cache
    k_pos = torch.arange(7.0).view(1, 7, 1)
    b = pos.bias(q_pos, k_pos, 8)
    assert b.shape == (1, 8, 2, 7)
    m = torch.tensor(alibi_slopes(8))
    expected = -m[:, None, None] * (q_pos[0, :, 0, None] - k_pos[0, None, :, 0]).abs()
    torch.testing.assert_close(b[0], expected, atol=0, rtol=0)


def test_alibi_is_applied_and_shift_invariant():
    alibi, none = make_model("alibi"), make_model("none")
    none.load_state_dict(alibi.state_dict())
    idx = torch.randint(0, V, (1, 12))
    p = torch.arange(12, dtype=F64).view(1, 12, 1)
    assert not torch.allclose(alibi(idx, p), none(idx, p))  # the bias changes the logits
    torch.testing.assert_close(alibi(idx, p + 100.5), alibi(idx, p), atol=1e-12, rtol=0)


def test_learned_table_too_short_is_a_clear_error():
    model = make_model("learned", max_len=32)
    positions = torch.arange(30, 40, dtype=F64).view(1, 10, 1)  # e.g. tie_v1 positions past the table
    with pytest.raises(ValueError, match="max_len=32"):
        model(torch.zeros(1, 10, dtype=torch.long), positions)


def problems(name, head_dim=None, d_model=32, n_head=2, **kw):
    run = SimpleNamespace(model=ModelConfig(d_model=d_model, n_head=n_head, head_dim=head_dim))
    return POS.get(name).Config(**kw).check(run)


def test_config_errors_name_the_keys():
    assert all(problems(n) == [] for n in NEW)
    (p,) = problems("mrope", sections=[4, 4, 4])  # head_dim 16: 8 pairs
    assert "pos.sections=[4, 4, 4]" in p and "model.head_dim" in p and "has 8 frequency pairs" in p
    assert "three non-negative" in problems("mrope", sections=[4, 4])[0]
    assert "three non-negative" in problems("mrope", sections=[10, -1, -1])[0]
    assert "at least 3 frequency pairs" in problems("mrope", d_model=8, n_head=2)[0]  # head_dim 4
    for n in ("rope2d", "rope_tie", "rope_tie_v2", "mrope"):
        assert any("odd" in s for s in problems(n, head_dim=15)), n
    assert "pos.n_axes=3" in problems("rope_tie", n_axes=3)[0]
    assert "pos.n_axes=4" in problems("rope2d", n_axes=4)[0]
    assert problems("rope_tie_v2", n_axes=3) == []
    assert "one frequency pair per axis" in problems("rope2d", d_model=8, n_head=2, n_axes=3)[0]


@pytest.mark.parametrize("attention", ["gqa", "mqa", "mla"])
@pytest.mark.parametrize("name", ["rope_tie_v2", "mrope", "alibi"])
def test_other_attention_variants_cached_with_image_positions(attention, name):
    # Each attention variant applies the hooks where it chooses (MLA: the decoupled part only); with
    # assigned image positions, prefill + incremental decoding still equals the full pass.
    from lmlab.registry import ATTENTION

    torch.manual_seed(0)
    mcfg = ModelConfig(d_model=64, n_head=4, n_layer=2, seq_len=32)
    attn_cfg = ATTENTION.get(attention).Config()
    model = Transformer(mcfg, attn_cfg, POS.get(name).Config(), V).double().eval()
    idx = torch.randint(0, V, (2, 18))
    positions = positions_for(model, True)
    full = model(idx, positions)
    caches = model.new_caches()
    out = [model(idx[:, :10], positions[:, :10], caches=caches)]
    out += [model(idx[:, t : t + 1], positions[:, t : t + 1], caches=caches) for t in range(10, 18)]
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-10, rtol=0)


def test_config_errors_through_compose(compose):
    from lmlab.config import ConfigError

    # MLA rotates only its decoupled part, so M-RoPE sections are counted against rope_head_dim.
    assert compose(["attention=mla", "pos=mrope", "attention.rope_head_dim=8", "pos.sections=[1,1,2]"])
    with pytest.raises(ConfigError, match=r"pos.sections=\[4, 6, 6\].*attention.rope_head_dim = 8"):
        compose(["attention=mla", "pos=mrope", "attention.rope_head_dim=8", "pos.sections=[4,6,6]"])
    with pytest.raises(ConfigError, match="pos.n_axes=3 is not supported by pos.name=rope_tie"):
        compose(["pos=rope_tie", "pos.n_axes=3"])
