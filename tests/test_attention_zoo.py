"""Properties every attention variant of the zoo must hold (SPEC §9, §10; issue 4): GQA's reductions
to MHA and MQA, cached incremental decoding == full forward, causality, the cache-size formulas,
config errors naming keys, and a tiny model overfitting one batch."""

import pytest
import torch
import torch.nn.functional as F

from lmlab.config import ModelConfig, load_variants
from lmlab.model.transformer import Transformer
from lmlab.registry import ATTENTION, POS

load_variants()
F64 = torch.float64
H, D = 4, 8  # heads, head dim (d_model 32)

# (attention name, config keys, position encodings it is tested with)
VARIANTS = [
    ("mha", {}, ["rope", "alibi"]),
    ("gqa", {"n_kv_head": 2}, ["rope", "alibi"]),
    ("mqa", {}, ["rope", "alibi"]),
    ("mla", {"kv_lora_rank": 12, "rope_head_dim": 4}, ["rope", "alibi", "none"]),
    ("mla", {"kv_lora_rank": 12, "rope_head_dim": 4, "q_lora_rank": 16, "nope_head_dim": 6,
             "v_head_dim": 10}, ["rope"]),
    ("vq", {"codebook_size": 8, "block_len": 4, "window": 3}, ["none"]),
]
CASES = [(n, kw, p) for n, kw, ps in VARIANTS for p in ps]
IDS = [f"{n}-{p}-{i}" for i, (n, kw, p) in enumerate(CASES)]


def make_layer(name, pos="none", n_head=H, dtype=F64, seed=0, **kw):
    mc = ModelConfig(d_model=32, n_head=n_head, head_dim=D, n_layer=1, seq_len=64)
    p = POS.get(pos)(POS.get(pos).Config(name=pos), mc)
    cls = ATTENTION.get(name)
    torch.manual_seed(seed)
    layer = cls(cls.Config(name=name, **kw), mc, p).to(dtype).eval()
    with torch.no_grad():
        for n_, prm in layer.named_parameters():
            if n_ == "local_bias":  # VQ's bias starts at zero; make it matter
                prm.normal_()
    return layer, p


def inputs(p, B=2, T=23, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, 32, generator=g, dtype=F64)
    return x, p.default_positions(B, T).to(F64)


def decode_in_chunks(layer, x, P, sizes=(7, 1, 1, 1, 5, 1, 7)):
    cache, outs, t = layer.new_cache(), [], 0
    state = []
    for s in sizes:
        outs.append(layer(x[:, t : t + s], P[:, t : t + s], cache))
        state.append(cache.n_state_elements() if hasattr(cache, "n_state_elements") else 0)
        t += s
    assert t == x.shape[1]
    return torch.cat(outs, 1), cache, state


# ------------------------------------------------------------------ GQA reductions (SPEC §9)


def test_gqa_with_every_head_its_own_group_is_mha():
    mha, p = make_layer("mha", "rope")
    gqa, _ = make_layer("gqa", "rope", seed=5, n_kv_head=H)
    gqa.load_state_dict(mha.state_dict())  # same parameter names and shapes
    x, P = inputs(p)
    torch.testing.assert_close(gqa(x, P), mha(x, P), rtol=0, atol=0)


def test_gqa_with_one_group_is_mqa():
    mqa, p = make_layer("mqa", "rope")
    gqa, _ = make_layer("gqa", "rope", seed=5, n_kv_head=1)
    gqa.load_state_dict(mqa.state_dict())
    x, P = inputs(p)
    torch.testing.assert_close(gqa(x, P), mqa(x, P), rtol=0, atol=0)


@pytest.mark.parametrize("g", [1, 2])
def test_gqa_equals_mha_with_key_value_weights_shared_within_groups(g):
    # Head s reads group floor(s*g/h): copying each group's k/v weights to its heads gives MHA.
    gqa, p = make_layer("gqa", "rope", n_kv_head=g)
    mha, _ = make_layer("mha", "rope", seed=5)
    sd = gqa.state_dict()
    w = sd["kv_proj.weight"].view(2, g, D, 32).repeat_interleave(H // g, dim=1)  # (2, H, D, C)
    mha.load_state_dict({**sd, "kv_proj.weight": w.reshape(2 * H * D, 32)})
    x, P = inputs(p)
    torch.testing.assert_close(gqa(x, P), mha(x, P), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------ every variant


@pytest.mark.parametrize("name,kw,pos", CASES, ids=IDS)
def test_cached_decoding_equals_full_forward(name, kw, pos):
    layer, p = make_layer(name, pos, **kw)
    x, P = inputs(p)
    full = layer(x, P)
    inc, _, _ = decode_in_chunks(layer, x, P)
    torch.testing.assert_close(inc, full, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name,kw,pos", CASES, ids=IDS)
def test_causal(name, kw, pos):
    layer, p = make_layer(name, pos, **kw)
    x, P = inputs(p)
    y = x.clone()
    y[:, 13:] = torch.randn_like(y[:, 13:])
    a, b = layer(x, P), layer(y, P)
    torch.testing.assert_close(a[:, :13], b[:, :13], rtol=1e-12, atol=1e-12)
    assert (a[:, 13:] - b[:, 13:]).abs().max() > 1e-3  # the perturbation does reach later rows


@pytest.mark.parametrize("n_head", [2, 4])
@pytest.mark.parametrize("name,kw,expected", [
    ("mha", {}, lambda h: 2 * h * D),
    ("gqa", {"n_kv_head": 2}, lambda h: 2 * 2 * D),
    ("mqa", {}, lambda h: 2 * D),
    ("mla", {"kv_lora_rank": 12, "rope_head_dim": 4, "nope_head_dim": 8}, lambda h: 12 + 4),
])
def test_cache_elements_per_token(name, kw, expected, n_head):
    layer, p = make_layer(name, "rope", n_head=n_head, **kw)  # head dim D whatever the head count
    x, P = inputs(p)
    _, cache, _ = decode_in_chunks(layer, x, P)
    assert layer.cache_elems_per_token() == expected(n_head)
    assert cache.n_elements_per_token() == expected(n_head)  # measured from the stored tensors


def test_vq_cache_is_a_constant_state():
    S, bl = 8, 4
    layer, p = make_layer("vq", codebook_size=S, block_len=bl, window=3)
    x, P = inputs(p, T=40)
    _, cache, state = decode_in_chunks(layer, x, P, sizes=(5,) + (1,) * 30 + (5,))
    assert layer.cache_elems_per_token() == 0 and cache.n_elements_per_token() == 0
    # per head: S value sums of width D, S counts, and at most 2l-1 window tokens (code + value)
    formula = H * (S * (D + 1) + (2 * bl - 1) * (D + 1))
    assert layer.cache_state_elems() == formula
    assert max(state) == formula and all(s <= formula for s in state)
    assert len(set(state[8:])) <= bl  # it cycles with the block; it does not grow with the context


# ------------------------------------------------------------------ config errors name keys


def _check(name, pos, n_head=4, **kw):
    from types import SimpleNamespace

    run = SimpleNamespace(model=ModelConfig(d_model=32, n_head=n_head), pos=POS.get(pos).Config(name=pos))
    return ATTENTION.get(name).Config(name=name, **kw).check(run)


def test_config_errors():
    assert any("attention.n_kv_head=3" in e and "model.n_head=4" in e for e in _check("gqa", "rope", n_kv_head=3))
    assert _check("gqa", "rope", n_kv_head=2) == []
    assert any("pos.name=rope" in e and "codeword" in e for e in _check("vq", "rope"))
    assert any("pos.name=alibi" in e for e in _check("vq", "alibi"))
    assert _check("vq", "learned") == [] and _check("vq", "none") == []
    assert any("attention.window=9" in e for e in _check("vq", "none", block_len=8, window=9))
    assert any("attention.rope_head_dim=0" in e for e in _check("mla", "rope", rope_head_dim=0))
    assert any("attention.rope_head_dim=3" in e for e in _check("mla", "rope", rope_head_dim=3))
    assert _check("mla", "none", rope_head_dim=0) == []


def test_vq_with_rope_is_refused_by_the_composed_config(compose):
    from lmlab.config import ConfigError

    with pytest.raises(ConfigError, match="pos.name=rope"):
        compose(["attention=vq", "pos=rope", "model=nano"])


# ------------------------------------------------------------------ a tiny model overfits one batch


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", [
    ("mha", {}), ("gqa", {"n_kv_head": 2}), ("mqa", {}), ("mla", {"kv_lora_rank": 16}),
    ("vq", {"codebook_size": 16, "block_len": 4}),  # 4 blocks: the aggregated codes take part
])
def test_tiny_model_overfits_one_batch(name, kw):
    torch.manual_seed(0)
    V, T = 17, 16
    pos = "learned" if name == "vq" else "rope"
    mc = ModelConfig(d_model=32, n_head=4, n_layer=1, seq_len=T)
    model = Transformer(mc, ATTENTION.get(name).Config(name=name, **kw), POS.get(pos).Config(name=pos), V)
    batch = torch.randint(0, V, (4, T + 1))
    batch[:, 0] = torch.arange(4)  # distinct first tokens: every prefix determines its next token
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(80):
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        aux = model.aux_loss()
        opt.zero_grad()
        (loss + (aux if aux is not None else 0)).backward()
        opt.step()
    assert loss.item() < 0.05, f"{name} did not overfit: loss {loss.item():.3f} (start ~{torch.log(torch.tensor(V)):.2f})"
