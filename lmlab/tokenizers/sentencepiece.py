"""SentencePiece tokenizer (unigram or BPE), trained on the configured corpus and cached.

Design choices:
- ``byte_fallback`` is always on, so every input is representable (unknown characters become
  their UTF-8 bytes, e.g. ``<0x0A>`` for a newline, which SentencePiece never sees in training).
- ``normalization_rule_name=identity``, no dummy prefix, no whitespace collapsing: the bytes of the
  pieces concatenate back to the exact input (bits per byte need this). One exception: a literal
  U+2581 (▁) in the input decodes as a space, as in SentencePiece itself.
- The model is trained once per (corpus text, settings) and cached under
  ``<cache_dir>/tokenizers/sp-<hash>/``; the hash covers every line of training text and every
  setting, and the directory is written atomically (train in a temp dir, then rename).
- ``sample=true`` uses SentencePiece's own subword regularization: unigram ``nbest_size=-1``
  (FFBS over the full lattice) with inverse temperature ``alpha``; BPE models: BPE-dropout with
  probability ``alpha``. The generator passed to ``encode`` seeds SentencePiece's RNG per call.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np

from lmlab.registry import TOKENIZER
from lmlab.tokenizers.base import Tokenizer, TokenizerConfig

WHITESPACE = "\u2581"


@dataclass
class SentencePieceConfig(TokenizerConfig):
    name: str = "sentencepiece"
    vocab_size: int = 2048
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


def train_sentencepiece(cfg: SentencePieceConfig, texts: Iterable[str], cache_dir: str) -> Path:
    """Train (or find cached) and return the path of the .model file."""
    import sentencepiece as spm

    lines: list[str] = []
    h = hashlib.sha256()
    settings = {k: getattr(cfg, k) for k in (
        "vocab_size", "model_type", "character_coverage", "split_by_whitespace",
        "max_piece_length", "train_max_sentences")}
    h.update(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        for line in text.split("\n"):
            if line.strip():
                lines.append(line)
                h.update(line.encode("utf-8", "replace"))
                h.update(b"\n")
    if not lines:
        raise ValueError("no training text for the tokenizer (every document is empty)")
    out_dir = Path(cache_dir) / "tokenizers" / f"sp-{cfg.model_type}-{cfg.vocab_size}-{h.hexdigest()[:16]}"
    model = out_dir / "sp.model"
    if model.exists():
        return model
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=".tmp-"))
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(tmp / "sp"),
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
        (tmp / "settings.json").write_text(json.dumps(settings, indent=1))
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process finished first: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except RuntimeError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if "Vocabulary size too high" in str(e):
            raise ValueError(f"tokenizer.vocab_size={cfg.vocab_size} is too large for this corpus "
                             f"({len(lines):,} training lines): {str(e).split(']')[-1].strip()}") from None
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return model


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
    def from_model_bytes(cls, data: bytes, cfg) -> SentencePieceTokenizer:
        tok = cls.__new__(cls)
        tok.cfg = cfg
        tok.model_path = cfg.model_path or "(model bytes from a checkpoint)"
        tok._load(data)
        return tok

    @classmethod
    def build(cls, cfg: SentencePieceConfig, train_texts: Callable[[], Iterable[str]], cache_dir: str):
        path = cfg.model_path or train_sentencepiece(cfg, train_texts(), cache_dir)
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
        return {**super().describe(), "model_type": self.cfg.model_type, "model_path": self.model_path}
