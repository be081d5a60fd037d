"""SentencePiece tokenizer (unigram or BPE), trained on the configured corpus and cached.

Design choices:
- ``byte_fallback`` is always on, so every input is representable (unknown characters become
  their UTF-8 bytes, e.g. ``<0x0A>`` for a newline, which SentencePiece never sees in training).
- ``normalization_rule_name=identity``, no dummy prefix, no whitespace collapsing: the bytes of the
  pieces concatenate back to the exact input (bits per byte need this). One exception: a literal
  U+2581 (▁) in the input decodes as a space, as in SentencePiece itself.
- Training reads the corpus once, streamed, keeping a seeded reservoir sample of at most
  ``train_max_sentences`` lines (never the whole corpus in memory). When the corpus has no more
  lines than that, the sample is every line in corpus order -- exactly what SentencePiece was given
  before, so the default corpus gives the same model.
- The model is cached under ``<cache_dir>/tokenizers/sp-<type>-<vocab>-<key>/``. The key is the
  training texts' fingerprint (an HF ``Dataset._fingerprint``, passed as ``train_texts.fingerprint``)
  plus every setting; without a fingerprint it is a hash of every line (tests, plain lists). The
  directory is written atomically (train in a temp dir, then rename) and holds ``meta.json``: the
  model's sha256 and the settings. A cache entry whose model does not match its recorded sha256
  (truncated, or another model swapped in) or whose settings differ is rebuilt with a one-line
  message naming the path. ``content_hash()`` is the sha256 of the model bytes in use.
- ``sample=true`` uses SentencePiece's own subword regularization: unigram ``nbest_size=-1``
  (FFBS over the full lattice) with inverse temperature ``alpha``; BPE models: BPE-dropout with
  probability ``alpha``. The generator passed to ``encode`` seeds SentencePiece's RNG per call,
  which makes the draws a function of the seed *within one process* only: with SentencePiece 0.2.x
  the same seed gives different samples in another process (measured; its seed is a thread-local
  default, google/sentencepiece#540, #609), so a run or a resume with ``sample=true`` is not
  reproducible from its seed. ``build`` says so once; ``tokenizer=unigram mode=sample`` draws from
  the same law (unigram FFBS) reproducibly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from lmlab.files import sha256_file
from lmlab.registry import TOKENIZER
from lmlab.tokenizers.base import Tokenizer, TokenizerConfig

WHITESPACE = "\u2581"


@dataclass
class SentencePieceConfig(TokenizerConfig):
    name: str = "sentencepiece"
    vocab_size: int = 8192
    model_type: Literal["unigram", "bpe"] = "unigram"
    character_coverage: float = 0.9995
    split_by_whitespace: bool = True  # false lets pieces span words ("import numpy as np")
    max_piece_length: int = 16
    train_max_sentences: int = 300_000  # lines sampled from the corpus for training
    num_threads: int = 2
    sample: bool = False
    alpha: float = 0.1  # unigram: inverse temperature; bpe: dropout probability
    model_path: Optional[str] = None  # an existing .model file instead of training

    def check(self, run) -> list[str]:
        p = []
        if self.vocab_size < 260 + 3 and self.model_path is None:
            p.append(f"tokenizer.vocab_size={self.vocab_size} must exceed 262 (256 byte pieces + specials)")
        return p + self.sampling_problems()

    def sampling_problems(self) -> list[str]:
        """Problems with the sampling keys (``sample``, ``alpha``); a subclass that samples its own
        way overrides this instead of filtering the messages."""
        p = []
        if self.sample and self.model_type == "bpe" and not 0.0 <= self.alpha <= 1.0:
            p.append(f"tokenizer.alpha={self.alpha} is a BPE-dropout probability and must be in [0, 1]")
        if self.sample and self.alpha < 0:
            p.append(f"tokenizer.alpha={self.alpha} must be >= 0")
        return p


def _piece_bytes(sp, i: int) -> bytes:
    if sp.is_control(i) or sp.is_unknown(i):
        return b""
    if sp.is_byte(i):
        return bytes([int(sp.id_to_piece(i)[1:-1], 16)])  # "<0x0A>" -> b"\n"
    return sp.id_to_piece(i).replace(WHITESPACE, " ").encode("utf-8")


MAX_LINE_BYTES = 4192  # SentencePiece's max_sentence_length: longer lines are skipped by its trainer
SAMPLE_SEED = 0
CACHE_VERSION = 2  # bumps when what a cache key means changes


def sample_lines(texts: Iterable[str], k: int, key=None) -> tuple[list[str], int]:
    """A seeded reservoir sample (Algorithm R) of at most ``k`` non-blank lines of ``texts``, read
    once, in corpus order while fewer than ``k`` were seen. ``key`` (a hashlib object) is updated
    with every line when given. Returns (sample, number of lines seen)."""
    rng = random.Random(SAMPLE_SEED)
    sample: list[str] = []
    n = 0
    for text in texts:
        for line in text.split("\n"):
            if not line.strip():
                continue
            if key is not None:
                key.update(line.encode("utf-8", "replace"))
                key.update(b"\n")
            if len(line.encode("utf-8", "replace")) > MAX_LINE_BYTES:
                continue  # the trainer would skip it; keep the slot for a usable line
            if n < k:
                sample.append(line)
            else:
                j = rng.randrange(n + 1)
                if j < k:
                    sample[j] = line
            n += 1
    return sample, n


def _cache_problem(out_dir: Path, settings: dict) -> str | None:
    """Why the cache entry in ``out_dir`` cannot be trusted, or None when it is intact."""
    model, meta_path = out_dir / "sp.model", out_dir / "meta.json"
    if not meta_path.exists():
        return "no meta.json (sha256 and settings) beside it"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return "meta.json is not readable JSON"
    if meta.get("settings") != settings:
        return "it was made with other settings"
    if not model.exists():
        return "sp.model is missing"
    if sha256_file(model) != meta.get("sha256"):
        return "sp.model does not match its recorded sha256 (damaged or replaced)"
    return None


def train_sentencepiece(cfg: SentencePieceConfig, texts: Iterable[str], cache_dir: str,
                        fingerprint: str | None = None, log: Callable[[str], None] | None = None) -> Path:
    """Train (or find cached and verified) and return the path of the .model file."""
    import sentencepiece as spm

    log = log or (lambda m: print(m, file=sys.stderr))
    settings = {k: getattr(cfg, k) for k in (
        "vocab_size", "model_type", "character_coverage", "split_by_whitespace",
        "max_piece_length", "train_max_sentences")}
    settings["cache_version"] = CACHE_VERSION
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    lines = None
    if fingerprint is not None:
        h.update(f"fingerprint:{fingerprint}".encode())
    else:  # no fingerprint: the key is a hash of the text, read (and sampled) now
        lines, n_lines = sample_lines(texts, cfg.train_max_sentences, key=h)
    settings["key"] = h.hexdigest()
    out_dir = Path(cache_dir) / "tokenizers" / f"sp-{cfg.model_type}-{cfg.vocab_size}-{h.hexdigest()[:16]}"
    model = out_dir / "sp.model"
    if out_dir.exists():
        problem = _cache_problem(out_dir, settings)
        if problem is None:
            return model
        log(f"tokenizer cache {out_dir}: {problem}; rebuilding it")
        shutil.rmtree(out_dir, ignore_errors=True)
    if lines is None:
        lines, n_lines = sample_lines(texts, cfg.train_max_sentences)
    if not lines:
        raise ValueError("no training text for the tokenizer (every document is empty)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".tmp-"))
    try:
        # written through model_writer (no model_prefix), so the model bytes -- and content_hash() --
        # depend on the training lines and settings only, not on the temp directory's name
        proto = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_writer=proto,
            model_type=cfg.model_type,
            vocab_size=cfg.vocab_size,
            byte_fallback=True,
            character_coverage=cfg.character_coverage,
            normalization_rule_name="identity",
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            split_by_whitespace=cfg.split_by_whitespace,
            max_sentencepiece_length=cfg.max_piece_length,
            input_sentence_size=cfg.train_max_sentences,
            shuffle_input_sentence=True,
            num_threads=cfg.num_threads,
            minloglevel=2,
        )
        (tmp / "sp.model").write_bytes(proto.getvalue())
        meta = {"sha256": sha256_file(tmp / "sp.model"), "settings": settings, "fingerprint": fingerprint,
                "lines_seen": n_lines, "lines_sampled": len(lines)}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except RuntimeError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if "Vocabulary size too high" in str(e):
            raise ValueError(f"tokenizer.vocab_size={cfg.vocab_size} is too large for this corpus "
                             f"({len(lines):,} training lines): {str(e).split(']')[-1].strip()}") from None
        if "smaller than required_chars" in str(e):
            raise ValueError(f"tokenizer.vocab_size={cfg.vocab_size} is too small for this corpus's characters "
                             f"(lower tokenizer.character_coverage or raise the vocabulary): "
                             f"{str(e).split(']')[-1].strip()}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model


SAMPLING_NOT_REPRODUCIBLE = (
    "tokenizer.sample=true: SentencePiece's own sampler is seeded per document but its draws differ between "
    "processes for the same seed (SentencePiece 0.2.x), so this run and its resumes are not reproducible from "
    "the seed; for a unigram model, tokenizer=unigram tokenizer.mode=sample draws from the same law reproducibly")


@TOKENIZER.register("sentencepiece")
class SentencePieceTokenizer(Tokenizer):
    Config = SentencePieceConfig

    def __init__(self, model_path: str, cfg: Optional[SentencePieceConfig] = None):
        self.cfg = cfg or self.Config()
        self.model_path = str(model_path)
        self._load(Path(model_path).read_bytes())

    def _load(self, proto: bytes) -> None:
        import sentencepiece as spm

        self._proto = proto
        self.sp = spm.SentencePieceProcessor(model_proto=proto)
        self._bytes = [_piece_bytes(self.sp, i) for i in range(self.sp.get_piece_size())]
        self.sampling = bool(self.cfg.sample)

    def __getstate__(self):
        return {"cfg": self.cfg, "model_path": self.model_path, "proto": self._proto}

    def __setstate__(self, state):
        self.cfg, self.model_path = state["cfg"], state["model_path"]
        self._load(state["proto"])

    def model_bytes(self) -> bytes:
        return self._proto

    @classmethod
    def build(cls, cfg: SentencePieceConfig, train_texts: Callable[[], Iterable[str]], cache_dir: str):
        # train_texts may carry the corpus fingerprint (lmlab.data.corpus.TrainTexts): then a cache
        # hit reads no text at all
        path = cfg.model_path or train_sentencepiece(
            cfg, train_texts(), cache_dir, fingerprint=getattr(train_texts, "fingerprint", None))
        if cfg.sample:
            warnings.warn(SAMPLING_NOT_REPRODUCIBLE, stacklevel=2)
        return cls(path, cfg)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def eos_id(self) -> int:
        return self.sp.eos_id()

    def encode(self, text: str, rng: Optional[np.random.Generator] = None) -> list[int]:
        if rng is None or not self.sampling:
            return self.sp.encode(text)
        import sentencepiece as spm

        spm.set_random_generator_seed(int(rng.integers(1, 2**31 - 1)))
        return self.sp.encode(text, enable_sampling=True, alpha=self.cfg.alpha, nbest_size=-1)

    def piece_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def bytes_table(self) -> list[bytes]:
        return list(self._bytes)

    def describe(self) -> dict:
        return {**super().describe(), "model_type": self.cfg.model_type, "model_path": self.model_path,
                "sha256": self.content_hash()}
