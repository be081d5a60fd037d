"""The SentencePiece tokenizer is lossless (bits per byte depend on it) and fails clearly."""

import pickle
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lmlab.tokenizers.sentencepiece import SentencePieceConfig, SentencePieceTokenizer

STDLIB = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:20]


@pytest.fixture(scope="module")
def tok(cache_dir):
    texts = [p.read_text(errors="replace") for p in STDLIB]
    return SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=600), lambda: texts, cache_dir)


@pytest.mark.parametrize("text", ["hello  world\n\n\tx = 1\r\n", "中文 and ünïcödé 🙂", "", "\x00\x7f tail "])
def test_encode_is_lossless(tok, text):
    ids = tok.encode(text)
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert sum(len(tok.piece_bytes(i)) for i in ids) == len(text.encode("utf-8"))


def test_sampling_is_seeded_and_lossless(tok):
    t = pickle.loads(pickle.dumps(tok))
    t.cfg.sample, t.sampling = True, True
    text = "def function_name(argument_value):\n    return argument_value"
    a = t.encode(text, np.random.default_rng(1))
    b = t.encode(text, np.random.default_rng(1))
    draws = {tuple(t.encode(text, np.random.default_rng(s))) for s in range(20)}
    assert a == b and len(draws) > 1
    assert all(t.decode_bytes(d) == text.encode() for d in draws)
    assert t.encode(text) == tok.encode(text)  # rng=None stays deterministic


def test_cached_by_corpus_and_settings(tok, cache_dir):
    texts = [p.read_text(errors="replace") for p in STDLIB]
    again = SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=600), lambda: texts, cache_dir)
    assert again.model_path == tok.model_path
    other = SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=600), lambda: texts[:-1], cache_dir)
    assert other.model_path != tok.model_path


def test_vocabulary_too_large_for_the_corpus_names_the_key(tmp_path):
    with pytest.raises(ValueError, match="tokenizer.vocab_size=5000 is too large for this corpus"):
        SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=5000), lambda: ["a tiny corpus\n"] * 3,
                                     str(tmp_path))
