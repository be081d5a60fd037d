"""Continuation probe (SPEC §5): byte-level probabilities against brute force, the search bound,
greedy checks, and the matched prompt construction."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from test_healing import TableLM  # the toy LM given as a lookup table

from lmlab.eval.healing import Healer, VocabIndex, generate
from lmlab.eval.probe import ProbeConfig, Query, make_prompts, run_probe, run_queries
from lmlab.tokenizers.base import Tokenizer

# id 0: end of text (no bytes); "a" twice (a piece and its byte-fallback twin spell the same bytes)
VOCAB = ["", "a", "b", "c", "ab", "ba", "abc", "bc", "ca", "aba", "a"]
TABLE = [v.encode() for v in VOCAB]
V = len(TABLE)


def softmax_row(lm, ctx):
    return torch.softmax(lm.row(tuple(ctx)), 0).numpy()


def brute_force(lm, ctx, target: bytes, constraint: bytes = b"", k_mode: bool = False) -> float:
    """Σ over every token sequence t1..tn (n ≤ len(target)) whose bytes first cover ``target``;
    constrained steps (healing) renormalise over their allowed set, written from the definition."""
    total = 0.0
    for n in range(1, len(target) + 1):
        for seq in itertools.product(range(V), repeat=n):
            bs = [TABLE[t] for t in seq]
            before = b"".join(bs[:-1])
            if not all(bs) or len(before) >= len(target) or not b"".join(bs).startswith(target):
                continue
            w, c, gen = 1.0, list(ctx), b""
            for t in seq:
                p = softmax_row(lm, c)
                if len(gen) < len(constraint):
                    def ok(b, gen=gen):
                        g = gen + b
                        return g.startswith(constraint) or (k_mode and constraint.startswith(g))

                    allowed = [i for i in range(V) if TABLE[i] and ok(TABLE[i])]
                    w *= p[t] / p[allowed].sum() if t in allowed else 0.0
                else:
                    w *= p[t]
                gen += TABLE[t]
                c.append(t)
            total += w
    return total


def encode(text: str) -> list[int]:
    """Longest match first (deterministic toy segmentation)."""
    raw, ids, i = text.encode(), [], 0
    while i < len(raw):
        best = max((j for j in range(1, V) if raw.startswith(TABLE[j], i)), key=lambda j: len(TABLE[j]))
        ids.append(best)
        i += len(TABLE[best])
    return ids


TARGETS = [b"a", b"ab", b"abc", b"bab", b"cab", b"abca"]


@pytest.mark.parametrize("seed", [0, 1])
def test_probability_equals_brute_force(seed):
    lm = TableLM(V, seed=seed, scale=1.5)
    index = VocabIndex(TABLE)
    ctx = (2, 3)
    qs = [Query(ctx, t) for t in TARGETS]
    run_queries(lm, index, qs, min_prob=0.0)
    for q in qs:
        assert q.dropped == 0.0
        assert q.p == pytest.approx(brute_force(lm, ctx, q.target), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2])
def test_healed_probability_equals_brute_force(k):
    lm = TableLM(V, seed=7, scale=1.5)
    index = VocabIndex(TABLE)
    prompt = encode("ccab")  # c / ca / b: k=1 removes "b" (extended by ba, bc); k=2 removes "cab"
    st = Healer(index, k).start(prompt)
    assert st.k == k and st.removed == b"".join(TABLE[i] for i in prompt[-k:])
    for y in [b"a", b"ca", b"cab"][: 3 if k == 1 else 2]:  # brute force costs V^len(removed + y)
        q = Query(tuple(st.ids), st.removed + y, constraint=st.removed, k_mode=k > 1)
        run_queries(lm, index, [q])
        want = brute_force(lm, st.ids, st.removed + y, st.removed, k > 1)
        assert want > 0 and q.p == pytest.approx(want, rel=1e-9)


def test_next_byte_probabilities_sum_to_one():
    """Σ_b P(next byte = b) + p(end-of-text token) = 1: no spelling counted twice or missed."""
    lm = TableLM(V, seed=2)
    index = VocabIndex(TABLE)
    qs = [Query((1,), b) for b in (b"a", b"b", b"c")]
    run_queries(lm, index, qs)
    p_eot = softmax_row(lm, (1,))[0]
    assert sum(q.p for q in qs) + p_eot == pytest.approx(1.0, abs=1e-12)


def test_bounded_search_brackets_the_exact_value():
    """min_prob > 0: the reported p is a lower bound and p + dropped an upper bound."""
    index = VocabIndex(TABLE)
    any_dropped = False
    for seed in range(4):
        lm = TableLM(V, seed=seed, scale=1.0)
        qs = [Query((3,), t) for t in TARGETS]
        run_queries(lm, index, qs, min_prob=0.05)
        for q in qs:
            exact = brute_force(lm, (3,), q.target)
            assert q.p <= exact + 1e-12 <= q.p + q.dropped + 2e-12
            any_dropped |= q.dropped > 0
    assert any_dropped


def test_each_node_evaluated_once():
    """Model rows = distinct token sequences spelling a proper prefix of the target (plus the root)."""
    lm = TableLM(V, seed=0)
    index = VocabIndex(TABLE)
    target = b"abca"
    rows = run_queries(lm, index, [Query((3,), target), Query((3,), target[:2])])
    n = 1
    for m in range(1, len(target)):
        n += sum(1 for seq in itertools.product(range(1, V), repeat=m)
                 if len(b"".join(TABLE[t] for t in seq)) < len(target)
                 and target.startswith(b"".join(TABLE[t] for t in seq)))
    assert rows == n


@pytest.mark.parametrize("k", [0, 1, 2])
def test_greedy_matches_reference_decoding(k):
    index = VocabIndex(TABLE)
    for seed in range(5):
        lm = TableLM(V, seed=seed)
        prompt = encode("ccab")
        ref = generate(lm, index, prompt, max_new_tokens=6, k=k, stop_ids=[0])
        st = Healer(index, k).start(prompt)
        out = b"".join(TABLE[i] for i in ref.ids[len(st.ids):])  # bytes after the (healed) context
        for target in [st.removed + b"a", st.removed + b"abc"]:
            q = Query(tuple(st.ids), target, constraint=st.removed, k_mode=k > 1, greedy=True)
            run_queries(lm, index, [q])
            assert out.startswith(q.generated)
            assert q.generated.startswith(target) == out.startswith(target)


class ToyTokenizer(Tokenizer):
    def __init__(self, pieces):
        self.table = [b""] + [p.encode() for p in pieces]

    @property
    def vocab_size(self):
        return len(self.table)

    @property
    def eos_id(self):
        return 0

    def encode(self, text, rng=None):
        raw, ids, i = text.encode(), [], 0
        while i < len(raw):
            j = max((j for j in range(1, len(self.table)) if raw.startswith(self.table[j], i)),
                    key=lambda j: len(self.table[j]))
            ids.append(j)
            i += len(self.table[j])
        return ids

    def piece_bytes(self, token_id):
        return self.table[token_id]


WORDS = ["the", "sun", "sunshine", "白云", "机场", "in", "rain", "is", "warm"]


def toy_text(seed: int, n_words: int = 400) -> str:
    rng = np.random.default_rng(seed)
    return "".join(" " + WORDS[i] if rng.random() < 0.8 else "\n" + WORDS[i]
                   for i in rng.integers(len(WORDS), size=n_words))


def toy_tokenizer() -> ToyTokenizer:
    chars = sorted(set("".join(WORDS)) | {" ", "\n"})
    return ToyTokenizer(chars + [" " + w for w in WORDS] + ["sun", "shine", "白", "云"])


def test_prompts_are_matched_boundary_and_mid_token_cuts():
    tok = toy_tokenizer()
    texts = [toy_text(0), toy_text(1)]
    cfg = ProbeConfig(n_prompts=40, context_tokens=12, max_target_bytes=6, seed=3)
    prompts = make_prompts(tok, texts, cfg)
    assert len(prompts) == 2 * 40
    for b, m in zip(prompts[0::2], prompts[1::2]):
        assert (b.kind, m.kind, b.pair) == ("boundary", "mid_token", m.pair)
        assert len(b.ids) == len(m.ids) == cfg.context_tokens
        pb, pm = tok.decode_bytes(b.ids), tok.decode_bytes(m.ids)
        # locate both cuts in their document (12-token contexts of this text are unique)
        doc = next(t.encode() for t in texts if (pb + b.word) in t.encode() and pm in t.encode())
        cut_b = doc.index(pb + b.word) + len(pb)
        cut_m = doc.index(pm + m.word) + len(pm)
        full = tok.encode(doc.decode())
        starts = np.cumsum([0] + [len(tok.piece_bytes(i)) for i in full]).tolist()
        assert cut_b in starts  # a token boundary of the deterministic segmentation
        token = tok.piece_bytes(full[starts.index(cut_b)])
        assert cut_b < cut_m < cut_b + len(token)  # strictly inside the token that starts there
        assert doc[cut_m:].startswith(m.word) and m.char == doc[cut_m:cut_m + len(m.char)]
        assert b.char == doc[cut_b:cut_b + len(b.char)] and len(b.char.decode()) == 1
        assert m.word.startswith(m.char) and b.word.startswith(b.char)
        assert m.lead == doc[cut_b:cut_m] and b.lead == b""


def test_prompts_with_byte_pieces_splitting_characters():
    """A character with no piece is spelled by its UTF-8 bytes, so token boundaries fall inside it:
    cuts stay on character boundaries, so every prompt ends with a whole character (its start, cut to
    exactly context_tokens tokens, may begin inside one)."""
    tok = toy_tokenizer()
    tok.table = [b for b in tok.table if b not in ("场".encode(), " 机场".encode())]
    tok.table += [bytes([x]) for x in "场".encode()]
    cfg = ProbeConfig(n_prompts=30, context_tokens=12, max_target_bytes=6, seed=0)
    prompts = make_prompts(tok, [toy_text(2)], cfg)
    assert len(prompts) == 60
    for pr in prompts:
        b = tok.decode_bytes(pr.ids)
        i = next(i for i in range(len(b)) if (b[i] & 0xC0) != 0x80)
        b[i:].decode("utf-8")  # strict: raises if the cut split a character
        pr.char.decode("utf-8")
        assert len(pr.char.decode()) == 1


def test_run_probe_end_to_end_on_a_tiny_transformer():
    from lmlab.config import ModelConfig, load_variants
    from lmlab.model.transformer import Transformer
    from lmlab.registry import ATTENTION, POS

    load_variants()
    torch.manual_seed(0)
    tok = toy_tokenizer()
    mcfg = ModelConfig(d_model=32, n_layer=1, n_head=2, seq_len=64)
    model = Transformer(mcfg, ATTENTION.get("mha").Config(), POS.get("rope").Config(), tok.vocab_size)
    res = run_probe(model, tok, [toy_text(5)], n_prompts=10, context_tokens=16, heal_k=[1, 2],
                    max_target_bytes=6, min_prob=1e-3)
    json.dumps(res)  # JSON-ready
    assert res["n_pairs"] == 10 and model.training  # train mode restored after the probe
    for name in ("plain", "heal_k1", "heal_k2"):
        v = res[name]
        for m in ("p_char", "p_word", "greedy_char", "greedy_word"):
            assert 0.0 <= v["mid_token"][m] <= 1.0 and 0.0 <= v["boundary"][m] <= 1.0
            assert v["gap"][m] == pytest.approx(v["boundary"][m] - v["mid_token"][m])
        assert v["boundary"]["dropped_max"] <= 1.0
        assert all(math.isfinite(v[k]["bits_char"]) for k in ("boundary", "mid_token"))
    assert res["heal_k1"]["mid_token"]["healed_frac"] > 0


class PairTokenizer(ToyTokenizer):
    """Every string of 1 or 2 characters over {a, b, space} is a token; encode = 2-byte chunks."""

    def __init__(self):
        chars = ["a", "b", " "]
        super().__init__(chars + [x + y for x in chars for y in chars])

    def encode(self, text, rng=None):
        return [self.table.index(text[i:i + 2].encode()) for i in range(0, len(text), 2)]


class ByteConsistentLM:
    """A token LM whose byte-level behaviour is a first-order byte Markov chain, whatever the
    tokenization of the context: p(t | ctx) = 1/2 · P_chain(bytes(t) | last byte of ctx) for t of
    1 or 2 bytes (each length has total mass 1/2). So P(next bytes = y | prompt) = P_chain(y | prompt)
    exactly, for mid-token prompts as much as for boundary prompts."""

    def __init__(self, tok, seed=0):
        rng = np.random.default_rng(seed)
        self.tok, self.P = tok, rng.dirichlet(np.ones(3), size=3)  # P[prev, next] over "ab "
        self.code = {ord("a"): 0, ord("b"): 1, ord(" "): 2}

    def chain(self, prev: int, y: bytes) -> float:
        p, c = 1.0, self.code[prev]
        for ch in y:
            p *= self.P[c, self.code[ch]]
            c = self.code[ch]
        return p

    def __call__(self, ids):
        out = torch.full((*ids.shape, self.tok.vocab_size), -math.inf, dtype=torch.float64)
        for b, seq in enumerate(ids.tolist()):
            for t in range(len(seq)):
                prev = self.tok.table[seq[t]][-1]
                for j in range(1, self.tok.vocab_size):
                    out[b, t, j] = math.log(0.5 * self.chain(prev, self.tok.table[j]))
        return out


def test_mid_token_equals_reference_for_a_tokenization_consistent_lm():
    tok = PairTokenizer()
    lm = ByteConsistentLM(tok)
    rng = np.random.default_rng(1)
    text = "".join(rng.choice(["a", "b", " "], size=3000))
    cfg = ProbeConfig(n_prompts=30, context_tokens=8, max_target_bytes=5, min_prob=0.0, heal_k=[1])
    prompts = make_prompts(tok, [text], cfg)
    res = run_probe(lm, tok, [text], cfg)
    want = {"boundary": [], "mid_token": []}
    for pr in prompts:
        prev = tok.decode_bytes(pr.ids)[-1]
        want[pr.kind].append((lm.chain(prev, pr.char), lm.chain(prev, pr.word)))
    for name in ("plain", "heal_k1"):
        v = res[name]
        for kind in ("boundary", "mid_token"):
            assert v[kind]["p_char"] == pytest.approx(np.mean([w[0] for w in want[kind]]), rel=1e-9)
            assert v[kind]["p_word"] == pytest.approx(np.mean([w[1] for w in want[kind]]), rel=1e-9)
        for m in ("p_char", "p_word", "bits_char"):
            assert v["gap_matched"][m] == pytest.approx(0.0, abs=1e-9)


def test_probe_config_checks_and_cli_parsing():
    from types import SimpleNamespace

    from lmlab.cli import ArgumentError
    from lmlab.cli.probe import parse_args as parse

    run = SimpleNamespace(model=SimpleNamespace(seq_len=64))
    assert ProbeConfig(context_tokens=60).check(run) == []  # disabled: nothing to object to
    problems = ProbeConfig(enabled=True, context_tokens=60, heal_k=[0]).check(run)
    assert any("probe.context_tokens=60" in p and "model.seq_len=64" in p for p in problems)
    assert any("probe.heal_k" in p for p in problems)
    cli, cfg = parse(["ckpt=x", "heal=false", "n_prompts=5"])
    assert cli.ckpt == "x" and cfg.heal_k == [] and cfg.n_prompts == 5
    assert parse(["ckpt=x", "heal=true", "k=2"])[1].heal_k == [2]
    assert parse(["ckpt=x", "heal_k=[1,2]"])[1].heal_k == [1, 2]
    with pytest.raises(ArgumentError, match="unknown key.*did you mean `n_prompts`"):
        parse(["ckpt=x", "n_prompt=5"])


def test_cut_tokenizer_gives_a_byte_model_the_same_texts_and_cuts():
    """probe.cut_tokenizer (issue 15's byte-level control): a byte tokenizer probed with the subword
    tokenizer's cuts gets the very same prompt texts (right-aligned; fewer bytes of left context when
    context_tokens is equal), targets and leads as the subword model -- and mid-token cuts still fall
    strictly inside a *subword* token, not at word starts."""
    from lmlab.tokenizers.bytes import BytesTokenizer

    tok, byt = toy_tokenizer(), BytesTokenizer()
    texts = [toy_text(0), toy_text(1)]
    cfg = ProbeConfig(n_prompts=30, context_tokens=12, max_target_bytes=6, seed=3)
    sub = make_prompts(tok, texts, cfg)
    bcfg = ProbeConfig(n_prompts=30, context_tokens=20, max_target_bytes=6, seed=3, cut_context_tokens=12)
    by = make_prompts(byt, texts, bcfg, cut_tokenizer=tok)
    assert len(by) == len(sub) == 60
    own = make_prompts(byt, texts, bcfg)  # without it: word cuts, other texts
    assert [p.word for p in own] != [p.word for p in by]
    # without cut_context_tokens, a longer context_tokens would pick cuts further into the text
    other = make_prompts(byt, texts, dataclasses.replace(bcfg, cut_context_tokens=None), cut_tokenizer=tok)
    assert [p.lead + p.word for p in other] != [p.lead + p.word for p in by]
    for s, b in zip(sub, by):
        assert (s.kind, s.pair, s.char, s.word, s.lead) == (b.kind, b.pair, b.char, b.word, b.lead)
        sb, bb = tok.decode_bytes(s.ids), byt.decode_bytes(b.ids)
        assert len(b.ids) == len(bb) == 20  # one id per byte, truncated to this tokenizer's context
        assert sb.endswith(bb) or bb.endswith(sb)  # the same text up to the same cut
