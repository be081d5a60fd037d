"""``tokenizer=bytepiece``: a hand-written BytePiece model loads with BytePiece's ids and scores,
segments line chunks of NFC text, Viterbi is the float64 argmax, sampling is exact (SPEC §3), and a
sample may split a character yet decodes back."""

from __future__ import annotations

import json
import math
import pickle
import unicodedata
from base64 import b64encode
from collections import Counter

import numpy as np
import pytest

from lmlab.tokenizers import lattice as L
from lmlab.tokenizers import lattice_fast as F
from lmlab.tokenizers.bytepiece import BytePieceConfig, BytePieceTokenizer, normalize

PIECES = {b"th": 40, b"he": 30, b"the": 60, b" the": 25, b"in": 35, b"ing": 30, b"ng": 10,
          "中文".encode(): 20, "中".encode()[:2]: 3, "文".encode(): 4, b"\n\n": 5}


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> str:
    counts = {bytes([c]): (50 if 97 <= c < 123 or c == 32 else 1) for c in range(256)} | PIECES
    ordered = sorted(counts, key=lambda k: (len(k), k))  # BytePiece numbers pieces by (length, bytes)
    raw = {b64encode(k).decode(): [i + 3, k.decode(errors="ignore"), counts[k]] for i, k in enumerate(ordered)}
    path = tmp_path_factory.mktemp("bp") / "bytepiece.json"
    path.write_text(json.dumps(raw))
    return str(path)


def test_ids_scores_and_specials(model_path):
    tok = BytePieceTokenizer(model_path)
    assert tok.vocab_size == 256 + len(PIECES) + 3 and tok.eos_id == 2
    assert [tok.piece_bytes(i) for i in range(3)] == [b"", b"", b""]
    raw = json.load(open(model_path))
    total = sum(v[2] for v in raw.values())
    for v in raw.values():
        assert tok.model.scores[v[0]] == pytest.approx(math.log(v[2]) - math.log(total), abs=1e-12)
    assert tok.piece_bytes(tok.model.pieces[b" the"]) == b" the"


def test_viterbi_is_the_float64_argmax_per_line_chunk(model_path):
    tok = BytePieceTokenizer(model_path)
    rng = np.random.default_rng(0)
    words = ["the", " the", "thing", "in", "中文", "中", "文", "\n", "\n\n", "e", "h"]
    for _ in range(150):
        text = "".join(rng.choice(words, size=int(rng.integers(1, 6))))
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert ids == [i for c in normalize(text) for i in L.segment_ref(tok.model, c)]  # compiled == ref
        expect = []
        for chunk in normalize(text):
            best, _ = L.brute_force_best(tok.model, chunk)
            expect += list(best)
        scores = [tok.model.scores[i] for i in ids]
        assert sum(scores) == pytest.approx(sum(tok.model.scores[i] for i in expect), abs=1e-9)
    assert normalize("ab\n\ncd\ne") == [b"ab\n\n", b"cd\n", b"e"]
    # no piece crosses a chunk: "\n\n" is a piece but "e\n\nt" splits after the newlines
    ids = tok.encode("he\n\nthe")
    assert tok.piece_bytes(ids[-1]) == b"the" and b"\n\n" in [tok.piece_bytes(i) for i in ids]


def test_nfc_and_round_trip(model_path):
    tok = BytePieceTokenizer(model_path, BytePieceConfig(model_path=model_path, mode="sample", alpha=0.0))
    rng = np.random.default_rng(1)
    for text in ["e\u0301te\u0301", "中文 the thing\n\nin", "a\ud800b", ""]:
        nfc = "a\ufffdb" if "\ud800" in text else unicodedata.normalize("NFC", text)
        for _ in range(10):
            assert tok.decode(tok.encode(text, rng)) == nfc


def test_sampling_is_exact_and_can_split_a_character(model_path):
    tok = BytePieceTokenizer(model_path, BytePieceConfig(model_path=model_path, mode="sample", alpha=0.5))
    text = "中文"
    exact = L.exact_distribution(tok.model, text.encode(), 0.5)
    n = 20000
    rng = np.random.default_rng(2)
    counts = Counter(tuple(tok.encode(text, rng)) for _ in range(n))
    tv = 0.5 * sum(abs(counts.get(k, 0) / n - p) for k, p in exact.items())
    assert set(counts) <= set(exact) and tv < 3 / np.sqrt(n)
    split = [k for k in counts if any(len(tok.piece_bytes(i)) in (1, 2) for i in k)]
    assert split  # some samples cut inside a character (bytes or the 2-byte piece) ...
    assert all(tok.decode(k) == text for k in counts)  # ... and still decode to the text


def test_pickle_and_bad_models(model_path, tmp_path):
    tok = BytePieceTokenizer(model_path, BytePieceConfig(model_path=model_path, mode="sample_v1"))
    clone = pickle.loads(pickle.dumps(tok))
    text = "the thing in the\n中文"
    assert clone.encode(text, np.random.default_rng(3)) == tok.encode(text, np.random.default_rng(3))
    g = np.random.default_rng(4)  # sampled passes equal the reference draw for draw
    for c in normalize(text * 3):
        seed = int(g.integers(0, 2**63))
        assert L.segment_ref(tok.model, c, "sample_v1", 0.2, seed) == \
            F.segment(tok.model, c, "sample_v1", 0.2, seed).tolist()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({b64encode(b"ab").decode(): [3, "ab", 5]}))
    with pytest.raises(ValueError, match="holds all 256 bytes"):
        BytePieceTokenizer(str(bad))
    bad.write_text(json.dumps(["not", "a", "model"]))
    with pytest.raises(ValueError, match="not a BytePiece model"):
        BytePieceTokenizer(str(bad))
    problems = BytePieceConfig(alpha=-1).check(None)
    assert any("tokenizer.model_path" in p for p in problems) and any("alpha" in p for p in problems)


def test_plain_data_state_round_trip(model_path):
    """to_state() is plain data (what a checkpoint stores); from_state() needs no model file."""
    import io

    import torch

    from lmlab.tokenizers.base import Tokenizer

    tok = BytePieceTokenizer(model_path, BytePieceConfig(model_path=model_path, mode="sample", alpha=0.5))
    buf = io.BytesIO()
    torch.save(tok.to_state(), buf)
    buf.seek(0)
    clone = Tokenizer.from_state(torch.load(buf, weights_only=True))
    assert type(clone) is BytePieceTokenizer and clone.cfg == tok.cfg
    text = "the thing in 中文\n\nthe end"
    assert clone.encode(text, np.random.default_rng(2)) == tok.encode(text, np.random.default_rng(2))
    assert clone.bytes_table() == tok.bytes_table()
