"""``python -m lmlab tokenize``: encode/samples/stats on a SentencePiece unigram .model, and train
from a composed config. Outputs are checked against the tokenizer API, not against themselves."""

from __future__ import annotations

import io
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from lmlab.cli import UsageError
from lmlab.cli import tokenize as cli
from lmlab.tokenizers.sentencepiece import SentencePieceConfig, train_sentencepiece
from lmlab.tokenizers.unigram import UnigramConfig, UnigramTokenizer

STDLIB = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
LINES = ["def f(x): return x  # 中文", "", "  two  spaces", "import os, sys", "π ≈ 3.14159 😀"]


@pytest.fixture(scope="module")
def model(cache_dir) -> str:
    text = "".join(p.read_text(errors="replace") for p in STDLIB[0:40:2])[:300_000]
    return str(train_sentencepiece(SentencePieceConfig(vocab_size=800, num_threads=1), [text], cache_dir))


def run(argv, stdin: str = "", monkeypatch=None) -> str:
    if monkeypatch is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode()), encoding="utf-8"))
    out = io.StringIO()
    cli.main(argv, out=out)
    return out.getvalue()


def test_encode_ids_and_pieces(model, monkeypatch):
    tok = UnigramTokenizer(model)
    got = run(["encode", f"model={model}"], "\n".join(LINES) + "\n", monkeypatch).splitlines()
    assert got == [" ".join(map(str, tok.sp.encode(line))) for line in LINES]
    got = run(["encode", f"model={model}", "pieces=true"], "\n".join(LINES) + "\n", monkeypatch).splitlines()
    assert got == [" ".join(tok.sp.encode(line, out_type=str)) for line in LINES]


def test_encode_samples_one_seeded_stream(model, monkeypatch):
    text = "\n".join(LINES * 3) + "\n"
    argv = ["encode", f"model={model}", "mode=sample", "alpha=0.1", "seed=7"]
    a = run(argv, text, monkeypatch)
    assert a == run(argv, text, monkeypatch)  # reproducible
    assert a != run(argv[:-1] + ["seed=8"], text, monkeypatch)  # the seed matters
    tok = UnigramTokenizer(model, UnigramConfig(mode="sample", alpha=0.1))
    rng = np.random.default_rng(7)  # one generator over all lines, in order
    assert a.splitlines() == [" ".join(map(str, tok.encode(line, rng))) for line in LINES * 3]


def test_samples_side_by_side(model):
    text = "subword regularization in Python"
    lines = run(["samples", text, "n=6", f"model={model}", "alpha=0.2", "seed=1"]).splitlines()
    assert len(lines) == 1 + 1 + 6
    tok = UnigramTokenizer(model)
    vit = [tok.sp.id_to_piece(i) for i in tok.encode(text)]
    assert lines[1].split(" | ")[1:] == vit
    for row in lines[2:]:
        pieces = row.split(" | ")[1:]
        assert "".join(pieces).replace("▁", " ") == text  # every sample spells the sentence
    assert len({row.split(" | ", 1)[1] for row in lines[1:]}) > 2


def test_stats(model, tmp_path):
    docs = [p.read_text(errors="replace") for p in STDLIB[1:9:2]]
    path = tmp_path / "corpus.txt"
    path.write_text("".join(docs), encoding="utf-8")
    out = run(["stats", str(path), f"model={model}", "mode=sample", "alpha=0.1"])
    tok = UnigramTokenizer(model)
    chunks = list(cli.chunks("".join(docs)))
    n_bytes = sum(len(c.encode()) for c in chunks)
    n_tok = sum(len(tok.encode(c)) for c in chunks)
    assert n_bytes == len("".join(docs).encode())
    assert f"viterbi     {n_tok} tokens, {n_bytes / n_tok:.3f} bytes/token" in out
    sampled = [ln for ln in out.splitlines() if ln.startswith("sampled")][0]
    assert float(sampled.split(", ")[1].split()[0]) < n_bytes / n_tok  # sampling inflates tokens
    assert "vocab use" in out


def test_bad_arguments(model, tmp_path):
    with pytest.raises(UsageError, match="alpha"):
        run(["samples", "x", f"model={model}", "alpha=-1"])
    with pytest.raises(UsageError, match="either model= or config overrides"):
        run(["samples", "x", f"model={model}", "tokenizer=unigram"])
    bad = tmp_path / "junk.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        run(["samples", "x", f"model={bad}"])


@pytest.mark.slow
def test_train_from_config_then_encode(cache_dir, tmp_path, monkeypatch):
    over = ["tokenizer=unigram", "data=pystdlib", "data.max_files=25", "tokenizer.vocab_size=400",
            f"cache_dir={cache_dir}"]
    out = subprocess.run([sys.executable, "-m", "lmlab", "tokenize", "train", *over], capture_output=True,
                         text=True, check=True, cwd=tmp_path).stdout
    assert out.startswith("UnigramTokenizer:") and "vocab_size=400" in out
    model_path = out.split("model_path=")[1].split(",")[0]
    assert Path(model_path).is_file()
    enc = run(["encode", *over, "pieces=true"], "import os\n", monkeypatch)  # in-process: from the cache
    tok = UnigramTokenizer(model_path)
    assert enc.split() == [tok.id_to_piece(i) for i in tok.encode("import os")]
