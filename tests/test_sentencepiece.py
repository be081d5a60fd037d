"""The SentencePiece tokenizer is lossless (bits per byte depend on it) and fails clearly."""

import pickle
import subprocess
import sys
import sysconfig
import warnings
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


def test_sampling_is_seeded_within_a_process_and_lossless(tok):
    t = pickle.loads(pickle.dumps(tok))
    t.cfg.sample, t.sampling = True, True
    text = "def function_name(argument_value):\n    return argument_value"
    a = t.encode(text, np.random.default_rng(1))
    b = t.encode(text, np.random.default_rng(1))
    draws = {tuple(t.encode(text, np.random.default_rng(s))) for s in range(20)}
    assert a == b and len(draws) > 1
    assert all(t.decode_bytes(d) == text.encode() for d in draws)
    assert t.encode(text) == tok.encode(text)  # rng=None stays deterministic


def test_sampling_build_warns_that_draws_are_not_reproducible(cache_dir):
    texts = [p.read_text(errors="replace") for p in STDLIB]
    with pytest.warns(UserWarning, match="not reproducible from the seed"):
        SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=600, sample=True), lambda: texts, cache_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=600), lambda: texts, cache_dir)


def test_sentencepiece_draws_differ_between_processes_for_one_seed(tok, tmp_path):
    # The limitation the warning states (SentencePiece 0.2.x): if this fails, SentencePiece's sampler became
    # reproducible across processes and the warning (and docs/variants.md's note) should go.
    model = tmp_path / "m.model"
    model.write_bytes(tok.model_bytes())
    code = (
        "import sys, numpy as np\n"
        "from lmlab.tokenizers.sentencepiece import SentencePieceConfig, SentencePieceTokenizer\n"
        "t = SentencePieceTokenizer(sys.argv[1], SentencePieceConfig(vocab_size=600, sample=True))\n"
        "text = open(sys.argv[2]).read()\n"
        "print(t.encode(text, np.random.default_rng(1)))\n")
    root = str(Path(__file__).resolve().parents[1])
    draws = {subprocess.run([sys.executable, "-c", code, str(model), str(STDLIB[0])], capture_output=True,
                            text=True, check=True, cwd=root).stdout for _ in range(2)}
    assert len(draws) == 2


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


def test_content_hash_is_the_sha256_of_the_model(tok):
    import hashlib

    assert tok.content_hash() == hashlib.sha256(Path(tok.model_path).read_bytes()).hexdigest()
    assert tok.describe()["sha256"] == tok.content_hash()


def test_reservoir_sample_is_bounded_seeded_and_all_lines_when_few():
    from lmlab.tokenizers.sentencepiece import sample_lines

    texts = [f"line {i}\nsecond {i}\n\n" for i in range(1000)]
    every = [x for t in texts for x in t.split("\n") if x.strip()]
    assert sample_lines(texts, 5000) == (every, 2000)  # fewer than k: every line, in corpus order
    a, n = sample_lines(iter(texts), 100)
    assert n == 2000 and len(a) == 100 and set(a) <= set(every)
    assert a == sample_lines(iter(texts), 100)[0]  # seeded
    assert sum(x.startswith("line 9") for x in a) > 0  # late lines can enter the reservoir
    long = ["x" * 5000 + "\nshort\n"]
    assert sample_lines(long, 10)[0] == ["short"]  # lines SentencePiece would skip take no slot


class Texts:
    """train_texts with a fingerprint: a cache hit must not read the text."""

    def __init__(self, texts, fingerprint):
        self.texts, self.fingerprint, self.reads = texts, fingerprint, 0

    def __call__(self):
        return self

    def __iter__(self):
        self.reads += 1
        return iter(self.texts)


def _damage_cases():
    def swap(model_dir, other):
        (model_dir / "sp.model").write_bytes(Path(other.model_path).read_bytes())

    def truncate(model_dir, other):
        b = (model_dir / "sp.model").read_bytes()
        (model_dir / "sp.model").write_bytes(b[: len(b) // 2])

    def no_meta(model_dir, other):
        (model_dir / "meta.json").unlink()

    def other_settings(model_dir, other):
        import json

        meta = json.loads((model_dir / "meta.json").read_text())
        meta["settings"]["vocab_size"] = 300
        (model_dir / "meta.json").write_text(json.dumps(meta))

    return {"swap": swap, "truncate": truncate, "no_meta": no_meta, "other_settings": other_settings}


@pytest.fixture(scope="module")
def fp_cache(tmp_path_factory):
    """A cache holding a 600-piece model keyed on fingerprint fp-1 and another (450) model."""
    d = tmp_path_factory.mktemp("fp-cache")
    texts = [p.read_text(errors="replace") for p in STDLIB]
    src = Texts(texts, "fp-1")
    first = SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=600), src, str(d))
    again = SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=600), src, str(d))
    other = SentencePieceTokenizer.build(SentencePieceConfig(vocab_size=450), Texts(texts, "fp-1"), str(d))
    return d, texts, first, again, other, src.reads


def test_fingerprint_keyed_cache_hit_reads_no_text(fp_cache):
    d, texts, first, again, other, reads = fp_cache
    assert reads == 1 and again.model_path == first.model_path
    assert again.content_hash() == first.content_hash() != other.content_hash()


@pytest.mark.parametrize("damage", list(_damage_cases()))
def test_damaged_tokenizer_cache_is_rebuilt_naming_the_path(tmp_path, fp_cache, damage):
    import shutil

    from lmlab.tokenizers.sentencepiece import train_sentencepiece

    d, texts, first, _, other, _ = fp_cache
    shutil.copytree(d, tmp_path / "c")
    model_dir = tmp_path / "c" / Path(first.model_path).parent.relative_to(d)
    _damage_cases()[damage](model_dir, other)
    messages = []
    path = train_sentencepiece(SentencePieceConfig(vocab_size=600), texts, str(tmp_path / "c"),
                               fingerprint="fp-1", log=messages.append)
    assert len(messages) == 1 and str(model_dir) in messages[0] and "rebuilding" in messages[0]
    rebuilt = SentencePieceTokenizer(path)
    # the same bytes as the first training: the model does not depend on where it was trained
    assert rebuilt.content_hash() == first.content_hash() and rebuilt.vocab_size == 600
