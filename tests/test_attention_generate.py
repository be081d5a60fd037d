"""Generation (lmlab.eval.generate, lmlab.cli.generate) and lmlab.cli.inspect: exact sampling distributions,
cached == uncached output for every attention variant, streaming text, and the cost figures."""

import io
from types import SimpleNamespace

import pytest
import torch

from lmlab.config import ModelConfig, load_variants
from lmlab.eval.generate import filtered_probs, generate, sample_next
from lmlab.model.transformer import Transformer
from lmlab.registry import ATTENTION, POS
from lmlab.tokenizers.base import Tokenizer

load_variants()
LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, 0.7]])


def test_temperature_and_top_k_distributions():
    torch.testing.assert_close(filtered_probs(LOGITS, 0.5), (LOGITS / 0.5).softmax(-1))
    p = filtered_probs(LOGITS, 1.0, top_k=3)  # keeps ids 0, 1, 5
    e = LOGITS[0].exp()
    want = torch.zeros(6)
    want[[0, 1, 5]] = e[[0, 1, 5]] / e[[0, 1, 5]].sum()
    torch.testing.assert_close(p[0], want)
    greedy = filtered_probs(LOGITS, 0.0)
    assert greedy[0].tolist() == [1, 0, 0, 0, 0, 0]
    assert torch.equal(filtered_probs(LOGITS, 1.0, top_k=1), greedy)


@pytest.mark.parametrize("top_p", [0.3, 0.5, 0.6, 0.9, 1.0])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p):
    probs = LOGITS[0].softmax(-1)
    order = probs.argsort(descending=True).tolist()
    kept, mass = [], 0.0
    for i in order:  # brute force: add tokens by probability until the mass reaches top_p
        kept.append(i)
        mass += probs[i].item()
        if mass >= top_p:
            break
    want = torch.zeros(6)
    want[kept] = probs[kept] / probs[kept].sum()
    torch.testing.assert_close(filtered_probs(LOGITS, 1.0, top_p=top_p)[0], want)


def test_sampling_frequencies_match_the_distribution():
    g = torch.Generator().manual_seed(0)
    n = 40000
    draws = sample_next(LOGITS.expand(n, 6), temperature=0.8, top_k=4, top_p=0.9, generator=g)
    freq = torch.bincount(draws, minlength=6).double() / n
    want = filtered_probs(LOGITS, 0.8, top_k=4, top_p=0.9)[0].double()
    assert (freq - want).abs().sum() / 2 < 0.01  # total variation; its sd here is ~0.002
    assert (freq[want == 0] == 0).all()


VARIANTS = [("mha", "rope", {}), ("gqa", "rope", {"n_kv_head": 2}), ("mqa", "alibi", {}),
            ("mla", "rope", {}), ("vq", "none", {"codebook_size": 16, "block_len": 4})]


def tiny_model(name, pos, kw, V=23):
    torch.manual_seed(0)
    mc = ModelConfig(d_model=32, n_head=4, n_layer=2, seq_len=32)
    model = Transformer(mc, ATTENTION.get(name).Config(name=name, **kw), POS.get(pos).Config(name=pos), V)
    with torch.no_grad():  # larger random weights than the init, so greedy paths wander
        for prm in model.parameters():
            prm.normal_(0.0, 0.5)
    return model.double().eval()


@pytest.mark.parametrize("name,pos,kw", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_greedy_and_seeded_sampling_with_and_without_cache_agree(name, pos, kw):
    model = tiny_model(name, pos, kw)
    prompt = [3, 1, 4, 1, 5]
    a = list(generate(model, prompt, 20, top_k=1, use_cache=True))
    b = list(generate(model, prompt, 20, top_k=1, use_cache=False))
    assert a == b and len(a) == 20
    s1 = list(generate(model, prompt, 20, temperature=1.0, top_p=0.95, use_cache=True, seed=7))
    s2 = list(generate(model, prompt, 20, temperature=1.0, top_p=0.95, use_cache=False, seed=7))
    assert s1 == s2 and len(set(s1)) > 3  # sampled paths visit many tokens: caches see varied input


def test_stop_id_ends_generation():
    model = tiny_model("mha", "rope", {})
    first = next(generate(model, [1, 2], 5, top_k=1))
    assert list(generate(model, [1, 2], 5, top_k=1, stop_id=first)) == []


class ByteTokenizer(Tokenizer):
    """Ids 0..255 are bytes, 256 is end-of-text."""

    @property
    def vocab_size(self):
        return 257

    @property
    def eos_id(self):
        return 256

    def encode(self, text, rng=None):
        return list(text.encode())

    def piece_bytes(self, token_id):
        return b"" if token_id == 256 else bytes([token_id])


@pytest.mark.parametrize("use_cache", ["true", "false"])
def test_cli_streams_the_decoded_continuation(use_cache):
    from lmlab.cli.generate import main

    model = tiny_model("mla", "rope", {}, V=257)
    tok = ByteTokenizer()
    run = SimpleNamespace(attention=SimpleNamespace(name="mla"))
    out, err = io.StringIO(), io.StringIO()
    ids = main(["ckpt=x.ckpt", "prompt=héllo", "max_new_tokens=24", "top_k=1", f"use_cache={use_cache}"],
               load=lambda path: (model, tok, run), out=out, err=err)
    want = list(generate(model, [256] + list("héllo".encode()), 24, top_k=1, stop_id=256))
    assert ids == want
    assert out.getvalue() == bytes(ids).decode("utf-8", errors="replace") + "\n"
    assert "tokens/s" in err.getvalue() and "tokens/s" not in out.getvalue()


def test_cli_rejects_unknown_keys():
    from lmlab.cli.generate import parse_args

    with pytest.raises(Exception, match="topk"):
        parse_args(["ckpt=x", "topk=3"])


def test_inspect_reports_cache_and_flops():
    from lmlab.cli.inspect import main

    # micro: d_model 256, 4 heads of 64, 3 layers
    text = main(["attention=mla", "model=micro", "context=512"])
    assert "288 elems per layer" in text  # d_c + d_r = 4·64 + 64/2
    assert f"{3 * 288:,} over 3 layers" in text
    text = main(["attention=gqa", "attention.n_kv_head=2", "model=micro"])
    assert "256 elems per layer (2·g·d_k = 2·2·64)" in text
    text = main(["attention=mha", "model=micro", "context=1000"])
    assert f"attention      {3 * 4 * 4 * 64 * 1000:,} prefill" in text  # 4·h·d_k·L per layer
    text = main(["attention=vq", "pos=none", "model=micro"])
    assert "0 elems per layer" in text and "constant decode state" in text


def test_prompt_is_taken_verbatim_not_parsed_as_yaml():
    from lmlab.cli.generate import parse_args

    a = parse_args(["ckpt=x.ckpt", "prompt=ROMEO: {a: 1}, [x]", "max_new_tokens=3"])
    assert a.prompt == "ROMEO: {a: 1}, [x]" and a.ckpt == "x.ckpt" and a.max_new_tokens == 3


@pytest.mark.parametrize("name,kw", [("mha", {}), ("gqa", {"n_kv_head": 2}), ("mla", {})])
def test_flops_per_token_equals_a_direct_count_of_the_matmuls(name, kw):
    """The attention classes own their FLOP formulas: T x Transformer.flops_per_token(T) equals torch's
    own count of every matmul of a T-token forward (manual kernel: the full T x T score and value
    products, as the formula counts one token attending T keys), and the layer's figure is its share."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    mc = ModelConfig(d_model=32, n_head=4, n_layer=2, seq_len=32)
    model = Transformer(mc, ATTENTION.get(name).Config(name=name, impl="manual", **kw),
                        POS.get("none").Config(name="none"), 50).eval()
    T = 24
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randint(0, 50, (1, T)))
    assert fc.get_total_flops() == T * model.flops_per_token(T)
    attn = model.blocks[0].attn
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        attn(torch.randn(1, T, 32), model.pos.default_positions(1, T, 0, device="cpu"))
    assert fc.get_total_flops() == T * attn.flops_per_token(T)
    assert attn.flops_per_token(2 * T) > attn.flops_per_token(T)  # attention grows with the context
