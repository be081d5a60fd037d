"""tokenizer=bytes: lossless on any text, one byte per non-special id (so bits per byte = loss / ln 2),
plain-data state, and the continuation probe cuts inside words for it."""

import io
import json
import math
import pickle
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch

from lmlab.config import ProbeConfig
from lmlab.eval.probe import WORD, make_prompts, run_probe
from lmlab.tokenizers.base import Tokenizer
from lmlab.tokenizers.bytes import BytesConfig, BytesTokenizer


def random_text(rng: np.random.Generator, n: int) -> str:
    """Code points from every plane that holds text (no lone surrogates), with emoji and controls."""
    ranges = [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    out = []
    for _ in range(n):
        lo, hi = ranges[int(rng.integers(len(ranges)))]
        out.append(chr(int(rng.integers(lo, hi + 1))))
    return "".join(out)


@pytest.fixture(scope="module")
def tok():
    return BytesTokenizer.build(BytesConfig(), lambda: pytest.fail("bytes needs no training text"), "/nonexistent")


def test_layout_specials_and_one_byte_per_id(tok):
    assert tok.vocab_size == 259 and tok.eos_id == 2 and not tok.sampling
    table = tok.bytes_table()
    assert table[:3] == [b"", b"", b""]
    assert table[3:] == [bytes([b]) for b in range(256)]
    assert tok.encode("Az\n") == [ord("A") + 3, ord("z") + 3, 10 + 3]
    assert tok.id_to_piece(2) == "<eos>" and tok.id_to_piece(3 + 0x0A) == "<0x0A>"


@pytest.mark.parametrize("seed", range(5))
def test_lossless_on_arbitrary_unicode(tok, seed):
    rng = np.random.default_rng(seed)
    text = random_text(rng, 300) + "🙂👩‍👩‍👧 e\u0301 \x00\r\n\t中文"
    ids = tok.encode(text, np.random.default_rng(0))  # an rng changes nothing: no sampling
    raw = text.encode("utf-8")
    assert ids == tok.encode(text) and len(ids) == len(raw)
    assert tok.decode_bytes(ids) == raw and tok.decode(ids) == text
    assert sum(len(tok.piece_bytes(i)) for i in ids) == len(raw)
    assert all(3 <= i < 259 for i in ids)


def test_no_normalization_and_lone_surrogates(tok):
    decomposed = "e\u0301"
    assert tok.decode(tok.encode(decomposed)) == decomposed != unicodedata.normalize("NFC", decomposed)
    assert tok.decode(tok.encode("a\ud800b")) == "a\ufffdb"
    assert tok.encode("") == []
    assert tok.decode_bytes([0, 1, 2, 3 + 65]) == b"A"  # specials spell nothing


def test_state_round_trip_and_pickle(tok):
    buf = io.BytesIO()
    torch.save(tok.to_state(), buf)
    buf.seek(0)
    clone = Tokenizer.from_state(torch.load(buf, weights_only=True))
    assert type(clone) is BytesTokenizer and clone.cfg == tok.cfg
    assert clone.bytes_table() == tok.bytes_table() and clone.encode("héllo 🙂") == tok.encode("héllo 🙂")
    assert pickle.loads(pickle.dumps(tok)).encode("x y") == tok.encode("x y")
    with pytest.raises(ValueError, match="tokenizer=bytes: the stored layout"):
        BytesTokenizer.from_model_bytes(b'{"kind": "bytes", "byte_offset": 0}', BytesConfig())


def test_vocab_size_override_is_a_config_error(compose):
    from lmlab.config import ConfigError

    run = compose(["tokenizer=bytes"])
    assert run.tokenizer.vocab_size == 259
    with pytest.raises(ConfigError, match="tokenizer.vocab_size=512: tokenizer=bytes always has 259 ids"):
        compose(["tokenizer=bytes", "tokenizer.vocab_size=512"])


@pytest.mark.parametrize("data", ["shakespeare", "pystdlib", "text data.paths=[x.txt]", "hf data.path=somewhere",
                                  "digits task=image_text"])
def test_composes_with_every_data_source(compose, data):
    name, *partner = data.split()
    run = compose(["tokenizer=bytes", f"data={name}", *partner])
    assert run.tokenizer.name == "bytes" and run.data.name == name


# ---- the continuation probe ----------------------------------------------------------------------

TEXT = ("the quick brown fox jumps over the lazy dog; 中文 words, and émigré cafés!\n" * 40)


def test_probe_cuts_word_starts_and_word_insides(tok):
    cfg = ProbeConfig(n_prompts=25, context_tokens=20, max_target_bytes=8, seed=1)
    prompts = make_prompts(tok, [TEXT], cfg)
    assert len(prompts) == 50
    raw = TEXT.encode()
    word_starts = {len(TEXT[:m.start()].encode()) for m in WORD.finditer(TEXT)}
    for b, m in zip(prompts[0::2], prompts[1::2]):
        assert (b.kind, m.kind) == ("boundary", "mid_token") and len(b.ids) == len(m.ids) == 20
        pb, pm = tok.decode_bytes(b.ids), tok.decode_bytes(m.ids)
        assert m.lead and pm.endswith(m.lead) and b.lead == b""
        # somewhere in the text: boundary prompt, then a word that starts with the lead and goes on
        ok = False
        for i in range(len(raw)):
            cut = i + len(pb)
            if cut in word_starts and raw.startswith(pb + m.lead + m.word, i):
                word = WORD.match(raw[cut:].decode()).group(0).encode()
                ok = ok or (word.startswith(m.lead) and len(m.lead) < len(word))
        assert ok
        m.char.decode("utf-8")  # whole characters only
        assert len(m.lead.decode("utf-8")) >= 1


class ByteMarkovLM:
    """First-order byte Markov chain as a token LM over tokenizer=bytes: p(next | ids) depends only on
    the last byte, so P(y | prompt + lead) is exactly the chain rule quotient the probe's reference uses."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.logits = torch.randn(259, 259, generator=g, dtype=torch.float64) * 2
        self.logits[:, :3] = -math.inf  # specials never follow

    def __call__(self, ids):
        return self.logits[ids]


def test_probe_reference_equals_mid_token_for_a_byte_markov_lm(tok):
    cfg = ProbeConfig(n_prompts=20, context_tokens=12, max_target_bytes=6, min_prob=0.0, heal_k=[1])
    res = run_probe(ByteMarkovLM(), tok, [TEXT], cfg)
    assert res["n_pairs"] == 20
    for name in ("plain", "heal_k1"):
        v = res[name]
        assert v["mid_token"]["n"] == v["boundary"]["n"] == v["mid_token_ref"]["n"] == 20
        for m in ("p_char", "p_word"):
            assert v["gap_matched"][m] == pytest.approx(0.0, abs=1e-12)
            assert 0 < v["mid_token"][m] < 1 and 0 < v["boundary"][m] < 1
    # healing k = 1 on bytes removes one byte and forces it back: the same probabilities as plain
    for kind in ("boundary", "mid_token"):
        assert res["heal_k1"][kind]["p_word"] == pytest.approx(res["plain"][kind]["p_word"], rel=1e-9)


def test_tiny_training_run_bits_per_byte_and_probe(compose, tiny_overrides):
    from lmlab.train.run import train

    over = [o for o in tiny_overrides if not o.startswith("tokenizer.")]
    run = compose(over + ["tokenizer=bytes", "run_name=bytes", "probe.enabled=true", "probe.n_prompts=4",
                          "probe.context_tokens=16", "probe.max_target_bytes=8", "probe.heal_k=[1]",
                          "probe.min_prob=0"])  # exact: an untrained model's reference would be dropped
    s = train(run, log=lambda *_: None)
    assert s["val_bytes_per_token"] == 1.0
    assert abs(s["val_bpb"] - s["val_loss"] / math.log(2)) < 1e-9
    res = json.loads((Path(run.out_dir) / "bytes" / "probe.json").read_text())
    assert res["n_pairs"] == 4
    for kind in ("boundary", "mid_token", "mid_token_ref"):
        assert res["plain"][kind]["n"] == 4 and 0 <= res["plain"][kind]["p_char"] <= 1
