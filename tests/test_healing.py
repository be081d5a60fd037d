"""Token healing (SPEC §5 remedy B): candidate search, the renormalised first step, the guarantees."""

import itertools

import numpy as np
import pytest
import torch
from scipy import stats

from lmlab.eval.healing import Healer, VocabIndex, generate, heal_first_step

# Toy vocabulary of SPEC §5 (id 0 is an end-of-text token with no bytes).
VOCAB = ["", "广州", "的", "白云", "白云机场", "白云山", "白云路", "机场", "山", "路", "是", "白", "云"]
TABLE = [v.encode() for v in VOCAB]


def encode_max_munch(text: str, table=TABLE) -> list[int]:
    """A deterministic toy segmentation: longest vocabulary match first."""
    raw, ids, i = text.encode(), [], 0
    while i < len(raw):
        best = max((j for j, b in enumerate(table) if b and raw.startswith(b, i)), key=lambda j: len(table[j]))
        ids.append(best)
        i += len(table[best])
    return ids


class TableLM:
    """A toy LM as a lookup table: logits depend on the whole context through a seeded hash."""

    def __init__(self, vocab_size: int, seed: int = 0, overrides=None, scale: float = 2.0):
        self.V, self.seed, self.overrides, self.scale = vocab_size, seed, overrides or {}, scale
        self.calls = 0
        self._memo = {}

    def row(self, ctx: tuple) -> torch.Tensor:
        if ctx not in self._memo:
            if ctx in self.overrides:
                self._memo[ctx] = torch.tensor(self.overrides[ctx], dtype=torch.float64)
            else:
                g = np.random.default_rng([self.seed, len(ctx), *ctx])
                self._memo[ctx] = torch.tensor(self.scale * g.standard_normal(self.V))
        return self._memo[ctx]

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.stack([torch.stack([self.row(tuple(seq[: t + 1])) for t in range(len(seq))])
                            for seq in ids.tolist()])


def test_vocab_index_matches_brute_force():
    rng = np.random.default_rng(0)
    alphabet = [b"a", b"b", b"\xff", b"\x00"]
    table = [b""] + sorted({b"".join(rng.choice(alphabet, size=rng.integers(1, 4))) for _ in range(40)})
    table += [b"a"]  # a duplicate spelling (as byte-fallback pieces give)
    idx = VocabIndex(table)
    for r in [b"", b"a", b"ab", b"\xff", b"\xff\xff", b"b\xff", b"\x00a", b"zz"]:
        want = sorted(i for i, b in enumerate(table) if b and b.startswith(r))
        assert sorted(idx.extending(r).tolist()) == want, r
        assert idx.strictly_extends(r) == any(b.startswith(r) and len(b) > len(r) for b in table)
        want_pre = sorted(i for i, b in enumerate(table) if b and r.startswith(b) and len(b) < len(r))
        assert sorted(i for _, ids in idx.prefixes(r) for i in ids) == want_pre


def test_first_step_distribution_chi_square_single_call():
    """Healed first token ~ p(t|ctx) renormalised over {tokens extending 白云}; one model call each."""
    index = VocabIndex(TABLE)
    lm = TableLM(len(TABLE), seed=3)
    prompt = encode_max_munch("广州的白云")
    assert [VOCAB[i] for i in prompt] == ["广州", "的", "白云"]
    cands = [VOCAB.index(v) for v in ("白云", "白云机场", "白云山", "白云路")]
    p = torch.softmax(lm.row(tuple(prompt[:-1]))[cands], 0).numpy()
    rng = np.random.default_rng(0)
    N = 20_000
    counts = dict.fromkeys(cands, 0)
    for _ in range(N):
        lm.calls = 0
        st = heal_first_step(lm, index, prompt, k=1, rng=rng)
        assert lm.calls == 1
        counts[st.ids[-1]] += 1  # KeyError if a non-candidate were drawn
    obs = np.array([counts[c] for c in cands])
    assert stats.chisquare(obs, N * p).pvalue > 1e-3


@pytest.mark.parametrize("k", [1, 2, 3])
def test_healed_output_starts_with_prompt(k):
    index = VocabIndex(TABLE)
    lm = TableLM(len(TABLE), seed=k, scale=1.0)
    rng = np.random.default_rng(k)
    for prompt_text in ["广州的白云", "白云是白", "广州白云山的", "的白"]:
        prompt = encode_max_munch(prompt_text)
        want = prompt_text.encode()
        healed_any = False
        for _ in range(100):
            st = generate(lm, index, prompt, max_new_tokens=4, k=k, rng=rng)
            out = b"".join(TABLE[i] for i in st.ids)
            assert out.startswith(want), (prompt_text, out.decode())
            healed_any |= st.k > 0
        assert healed_any or not Healer(index, k).would_change(b"".join(TABLE[i] for i in prompt[-k:]), k)


def test_no_extension_changes_nothing():
    """The last token '的' has no extension in the vocabulary: healing returns the prompt untouched and
    generation is draw for draw the plain one."""
    index = VocabIndex(TABLE)
    prompt = encode_max_munch("白云的")
    st = Healer(index, 1).start(prompt)
    assert st.ids == prompt and not st.active and st.k == 0
    lm = TableLM(len(TABLE), seed=1)
    for seed in range(20):
        a = generate(lm, index, prompt, 5, k=1, rng=np.random.default_rng(seed))
        b = generate(lm, index, prompt, 5, k=0, rng=np.random.default_rng(seed))
        assert a.ids == b.ids


def test_k2_byte_constrained_regression_import_numpy():
    """SPEC §5 regression: 'import numpy as np' is one token; the prompt 'import numpy' segments as
    import / ' numpy'. Plain and k=1 cannot produce ' as np'; k=2 (byte-constrained) can."""
    vocab = ["", "\n", "import", " numpy", "import numpy as np", " as", " np", "x", " ", "i", "m"]
    table = [v.encode() for v in vocab]
    index = VocabIndex(table)
    V = len(vocab)
    after = {(1,): vocab.index("import numpy as np")}  # after '\n' the model writes the whole line
    overrides = {}
    for ctx, t in after.items():
        row = [-5.0] * V
        row[t] = 5.0
        overrides[ctx] = row
    row = [-5.0] * V
    row[vocab.index("\n")] = 5.0  # after 'import',' numpy' (a context unseen in training): newline
    overrides[(1, 2, 3)] = row
    lm = TableLM(V, overrides=overrides)
    prompt = encode_max_munch("\nimport numpy", table)
    assert [vocab[i] for i in prompt] == ["\n", "import", " numpy"]
    plain = generate(lm, index, prompt, 1, k=0)
    k1 = generate(lm, index, prompt, 1, k=1)
    k2 = generate(lm, index, prompt, 1, k=2)
    dec = lambda st: b"".join(table[i] for i in st.ids).decode()  # noqa: E731
    assert dec(plain) == dec(k1) == "\nimport numpy\n"  # ' numpy' has no extension: k=1 is a no-op
    assert dec(k2) == "\nimport numpy as np"


def test_k2_allowed_set_is_prefix_or_extension():
    """Every allowed token of a constrained step is a prefix of the remaining bytes or extends them."""
    index = VocabIndex(TABLE)
    st = Healer(index, 2).start(encode_max_munch("广州的白云"))
    assert st.removed == "的白云".encode()
    for r in [st.remaining, "白云".encode(), "云".encode()]:
        got = set(index.allowed(r, True).tolist())
        want = {i for i, b in enumerate(TABLE) if b and (b.startswith(r) or (r.startswith(b) and b != r))}
        assert got == want


def test_greedy_is_argmax_over_candidates():
    index = VocabIndex(TABLE)
    for seed, k in itertools.product(range(5), [1, 2]):
        lm = TableLM(len(TABLE), seed=seed)
        prompt = encode_max_munch("广州的白云")
        st = heal_first_step(lm, index, prompt, k=k)
        ctx = tuple(prompt[:-k])
        r = b"".join(TABLE[i] for i in prompt[-k:])
        ok = [i for i, b in enumerate(TABLE) if b and (b.startswith(r) or (k > 1 and r.startswith(b)))]
        row = lm.row(ctx)
        assert st.ids[-1] == max(ok, key=lambda i: float(row[i]))


def _reference_healed(lm, index, prompt_ids, max_new_tokens, k, rng, temperature=1.0):
    """Healed decoding written from the definition, with no cache: the whole context every step."""
    state = Healer(index, k).start(prompt_ids)
    for _ in range(max_new_tokens):
        with torch.no_grad():
            logits = lm(torch.tensor([state.ids]))[0, -1].float()
        logits = state.constrain(logits)
        p = torch.softmax(logits.double() / temperature, -1).numpy()
        state.advance(int(rng.choice(len(p), p=p / p.sum())))
    return state


@pytest.mark.parametrize("k", [1, 2])
def test_healed_generation_runs_through_the_cached_loop_and_equals_the_uncached_reference(k):
    """A real Transformer: healing.generate decodes with the KV cache (after the prefill every model
    call sees one new token) and, for a fixed seed, draws exactly what the cache-free reference draws."""
    from lmlab.config import ModelConfig, load_variants
    from lmlab.model.transformer import Transformer
    from lmlab.registry import ATTENTION, POS

    load_variants()
    torch.manual_seed(0)
    model = Transformer(ModelConfig(d_model=32, n_layer=2, n_head=4, seq_len=64),
                        ATTENTION.get("mla").Config(), POS.get("rope").Config(), len(TABLE)).eval()
    index = VocabIndex(TABLE)
    prompt = [0] + encode_max_munch("广州的白云")  # ends in 白云: healing re-spells it
    assert Healer(index, k).start(prompt).k == k  # healing is active, so the test is not vacuous
    widths, forward = [], model.forward

    def spy(idx=None, *a, **kw):
        widths.append(idx.shape[1])
        return forward(idx, *a, **kw)

    model.forward = spy
    cached = generate(model, index, prompt, 12, k=k, rng=np.random.default_rng(5), temperature=1.5)
    model.forward = forward
    assert widths[0] == len(prompt) - k and set(widths[1:]) == {1}
    want = _reference_healed(model, index, prompt, 12, k, np.random.default_rng(5), temperature=1.5)
    assert cached.ids == want.ids and len(cached.ids) == len(prompt) - k + 12
    assert b"".join(TABLE[i] for i in cached.ids).startswith("广州的白云".encode())
    uncached = generate(model, index, prompt, 12, k=k, rng=np.random.default_rng(5), temperature=1.5, use_cache=False)
    assert uncached.ids == want.ids
