"""``tokenizer=unigram`` against SentencePiece: Viterbi ids equal ``SentencePieceProcessor.encode``
on held-out text, ``sample`` has SentencePiece's ``nbest_size=-1`` distribution, samples decode back
exactly, seeding is reproducible, and bad input gets a defined answer."""

from __future__ import annotations

import pickle
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.tokenizers import lattice as L
from lmlab.tokenizers.sentencepiece import SentencePieceConfig, train_sentencepiece
from lmlab.tokenizers.unigram import UnigramConfig, UnigramTokenizer

STDLIB = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))

# Text the model never saw in training: Chinese (no CJK piece: byte fallback), other scripts,
# control characters, combining marks, emoji, BOM, line separators, runs of spaces, a literal U+2581.
ODD = [
    "中文分词测试：随机分词浅探，从Viterbi Decoding到Viterbi Sampling。",
    "混合 mixed 文本 with digits 12345 and 标点！？",
    "\x00\x01\x02\x1b[31mred\x1b[0m\x7f\x85\u2028\u2029\ufeff",
    "tab\there\r\nwindows line\rcarriage",
    "e\u0301 n\u0303 \u00e9 ﬁ Ωmega Ελληνικά русский עברית العربية हिन्दी",
    "😀👍🏽🇫🇷 \U0001f9ea \U00010348",
    " ", "  ", "x" * 300, " " * 37, "▁ literal lower one eighth block",
    "def f(x):\n    return x  # comment\n\n\n",
]


@pytest.fixture(scope="session")
def sp_model(tmp_path_factory) -> Path:
    """A 800-piece unigram model on ~300 kB of the stdlib (about 2 s to train)."""
    text = "".join(p.read_text(errors="replace") for p in STDLIB[0:40:2])[:300_000]
    cfg = SentencePieceConfig(vocab_size=800, num_threads=1)
    return train_sentencepiece(cfg, [text], str(tmp_path_factory.mktemp("sp")))


@pytest.fixture(scope="session")
def held_out() -> list[str]:
    return [p.read_text(errors="replace") for p in STDLIB[1:60:2]] + ODD


def make(sp_model, **kw) -> UnigramTokenizer:
    return UnigramTokenizer(sp_model, UnigramConfig(**kw))


def test_viterbi_equals_sentencepiece_on_held_out_text(sp_model, held_out):
    """Id for id on every line and on 5000-character chunks (multi-line documents). The guarantee
    stops where path scores pass about -2**16 (tens of thousands of characters): there
    SentencePiece's compiled encoder no longer behaves like float32 (see lattice.py)."""
    tok = make(sp_model)
    n_lines = n_chunks = 0
    for doc in held_out:
        for i in range(0, len(doc), 5000):
            assert tok.encode(doc[i : i + 5000]) == tok.sp.encode(doc[i : i + 5000])
            n_chunks += 1
        for line in doc.split("\n"):
            assert tok.encode(line) == tok.sp.encode(line), line
            n_lines += 1
    assert n_lines > 5000 and n_chunks > 100
    # the byte-fallback path was exercised: unseen characters come out as byte pieces
    ids = tok.encode(ODD[0])
    assert sum(tok.sp.is_byte(i) for i in ids) >= 3


def test_reference_pass_equals_compiled_pass_on_real_text(sp_model, held_out):
    tok = make(sp_model)
    lines = [ln for doc in held_out[::6] for ln in doc.split("\n")[:40]] + ODD
    for i, line in enumerate(lines):
        data = tok.normalize(line)
        for mode in L.MODES:
            assert L.segment_ref(tok.model, data, mode, 0.2, i) == tok.segment(line, mode, 0.2, i)


@pytest.mark.parametrize("mode", ["sample", "sample_v1"])
@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0])
def test_every_sample_decodes_back_exactly(sp_model, held_out, mode, alpha):
    tok = make(sp_model, mode=mode, alpha=alpha)
    rng = np.random.default_rng(0)
    texts = [t for t in ODD if "▁" not in t] + [held_out[0][:3000]]
    for text in texts:
        seen = set()
        for _ in range(20):
            ids = tok.encode(text, rng)
            seen.add(tuple(ids))
            assert tok.decode(ids) == text
            assert tok.decode_bytes(ids) == text.encode()
    assert len(seen) == 20  # the source-code chunk has many segmentations: every draw differs
    # a character without a piece becomes its UTF-8 bytes, decoded together
    ids = tok.encode("中", rng)
    assert [tok.piece_bytes(i) for i in ids] == [b"\xe4", b"\xb8", b"\xad"]


def test_sample_has_sentencepiece_sampling_distribution(sp_model):
    """Both samplers against the exact P ∝ exp(alpha * score), hence against each other."""
    import sentencepiece as spm

    n = 20000
    bound = 3 / np.sqrt(n)
    tok = make(sp_model, mode="sample")
    sp = tok.sp
    for text, alpha in [("def f(x):", 0.1), ("def f(x):", 1.0), ("import", 0.1), ("print", 0.5)]:
        exact = L.exact_distribution(tok.model, tok.normalize(text), alpha)
        assert len(exact) >= 3 and max(exact.values()) < 0.97
        tok.cfg.alpha = alpha
        rng = np.random.default_rng(1)
        ours = Counter(tuple(tok.encode(text, rng)) for _ in range(n))
        spm.set_random_generator_seed(1)
        theirs = Counter(tuple(sp.encode(text, enable_sampling=True, alpha=alpha, nbest_size=-1))
                         for _ in range(n))
        tv_ours = 0.5 * sum(abs(ours.get(k, 0) / n - p) for k, p in exact.items())
        tv_theirs = 0.5 * sum(abs(theirs.get(k, 0) / n - p) for k, p in exact.items())
        assert set(ours) <= set(exact) and set(theirs) <= set(exact)
        assert tv_ours < bound and tv_theirs < bound, (text, alpha, tv_ours, tv_theirs)


def test_seeding(sp_model, held_out):
    tok = make(sp_model, mode="sample", alpha=0.1)
    doc = held_out[2][:4000]
    a = [tok.encode(doc, np.random.default_rng([7, 0, d])) for d in range(5)]
    b = [tok.encode(doc, np.random.default_rng([7, 0, d])) for d in range(5)]
    assert a == b  # same seed, same samples
    assert len({tuple(x) for x in a}) == 5  # different documents/epochs/workers' seeds differ
    assert tok.encode(doc) == tok.encode(doc) == tok.sp.encode(doc)  # no generator: deterministic
    # one stream: consecutive draws from one generator differ, and replay exactly
    g1, g2 = np.random.default_rng(3), np.random.default_rng(3)
    s1 = [tok.encode(doc, g1) for _ in range(3)]
    assert s1 == [tok.encode(doc, g2) for _ in range(3)] and s1[0] != s1[1]


def test_pickle_round_trip(sp_model, held_out):
    tok = make(sp_model, mode="sample", alpha=0.3)
    clone = pickle.loads(pickle.dumps(tok))
    doc = held_out[3][:2000]
    assert clone.encode(doc, np.random.default_rng(5)) == tok.encode(doc, np.random.default_rng(5))
    assert clone.bytes_table() == tok.bytes_table() and clone.eos_id == tok.eos_id
    assert clone.vocab_size == tok.vocab_size == 800


def test_bad_input(sp_model, tmp_path):
    tok = make(sp_model, mode="sample")
    rng = np.random.default_rng(0)
    assert tok.encode("") == [] and tok.encode("", rng) == []
    # lone surrogates (e.g. from surrogateescape) become U+FFFD; SentencePiece itself refuses them
    for mode in L.MODES:
        assert tok.decode(tok.segment("a\ud800b\udcff", mode, 0.1, 1)) == "a\ufffdb\ufffd"
    assert tok.encode("a\ud83d\ude00") == tok.encode("a😀")  # a surrogate pair is one character
    with pytest.raises(ValueError, match="alpha"):
        tok.segment("abc", "sample", -0.1)
    with pytest.raises(ValueError, match="mode"):
        tok.segment("abc", "nbest")


def test_a_bpe_model_is_refused(tmp_path):
    text = "".join(p.read_text(errors="replace") for p in STDLIB[0:6])[:60_000]
    bpe = train_sentencepiece(SentencePieceConfig(vocab_size=450, model_type="bpe", num_threads=1),
                              [text], str(tmp_path))
    with pytest.raises(ValueError, match="BPE model; tokenizer=unigram needs a UNIGRAM"):
        UnigramTokenizer(bpe)
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        (tmp_path / "junk.model").write_bytes(b"\xff\xfe not a proto")
        UnigramTokenizer(tmp_path / "junk.model")


def test_config_checks():
    problems = UnigramConfig(alpha=-1.0, model_type="bpe", sample=True).check(None)
    text = "\n".join(problems)
    assert "tokenizer.alpha=-1.0 must be >= 0" in text
    assert "tokenizer.model_type=bpe" in text
    assert "tokenizer.sample=true" in text
    assert UnigramConfig(mode="sample", alpha=0.0).check(None) == []


def test_build_reuses_the_sentencepiece_cache(tmp_path):
    texts = [p.read_text(errors="replace")[:15_000] for p in STDLIB[2:8:2]]
    cfg = UnigramConfig(vocab_size=400, mode="sample", num_threads=1)
    tok = UnigramTokenizer.build(cfg, lambda: texts, str(tmp_path))
    from lmlab.tokenizers.sentencepiece import SentencePieceTokenizer

    sp_tok = SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=400, num_threads=1),
                                          lambda: texts, str(tmp_path))
    assert tok.model_path == sp_tok.model_path  # one model, two segmenters
    assert tok.sampling and tok.encode(texts[0]) == sp_tok.encode(texts[0])


def test_training_stream_resamples_each_epoch_and_resumes_exactly(sp_model, held_out):
    """With the data pipeline: every epoch draws a new segmentation of a document, a resumed stream
    redraws exactly what the uninterrupted one drew, and validation packing stays deterministic."""
    from lmlab.data.pipeline import PackedTrainStream, pack_eval

    tok = make(sp_model, mode="sample", alpha=0.2)
    doc = held_out[4][:600]
    it = iter(PackedTrainStream([doc], tok, seq_len=32, batch_size=2, seed=5))
    batches = [next(it)["tokens"] for _ in range(30)]
    it = iter(PackedTrainStream([doc], tok, seq_len=32, batch_size=2, seed=5, start_batch=17))
    for b in batches[17:]:
        assert torch.equal(next(it)["tokens"], b)
    stream = torch.cat([b.flatten() for b in batches]).tolist()  # seg(epoch 0), EOS, seg(epoch 1), ...
    epochs = []
    while tok.eos_id in stream:
        k = stream.index(tok.eos_id)
        epochs.append(stream[:k])
        stream = stream[k + 1 :]
    assert len(epochs) >= 3 and all(tok.decode(e) == doc for e in epochs)
    assert len({tuple(e) for e in epochs}) == len(epochs)  # a fresh draw every epoch
    assert torch.equal(pack_eval([doc], tok, 32), pack_eval([doc], make(sp_model), 32))


def test_config_composes_and_reports_every_problem():
    from lmlab.config import ConfigError, compose

    run = compose(["tokenizer=unigram", "tokenizer.mode=sample"])
    assert run.tokenizer.name == "unigram" and run.tokenizer.alpha == 0.2
    with pytest.raises(ConfigError) as e:
        compose(["tokenizer=unigram", "tokenizer.alpha=-1", "tokenizer.model_type=bpe", "tokenizer.mode=nbest"])
    msg = str(e.value)
    assert "tokenizer.alpha=-1.0 must be >= 0" in msg and "tokenizer.model_type=bpe" in msg
    assert "tokenizer.mode='nbest' is not one of" in msg


def test_plain_data_state_round_trip(sp_model, held_out, tmp_path):
    """to_state() is plain data (what a checkpoint stores); from_state() needs no model file."""
    import io

    import torch

    from lmlab.tokenizers.base import Tokenizer

    tok = make(sp_model, mode="sample", alpha=0.3)
    buf = io.BytesIO()
    torch.save(tok.to_state(), buf)
    buf.seek(0)
    clone = Tokenizer.from_state(torch.load(buf, weights_only=True))
    assert type(clone) is UnigramTokenizer and clone.cfg == tok.cfg
    doc = held_out[3][:2000]
    assert clone.encode(doc, np.random.default_rng(5)) == tok.encode(doc, np.random.default_rng(5))
    assert clone.bytes_table() == tok.bytes_table()
