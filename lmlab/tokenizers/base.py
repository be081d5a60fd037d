"""The tokenizer interface the data pipeline, metrics and probes rely on.

- ``encode(text, rng=None)``: deterministic segmentation when ``rng`` is None; when the tokenizer
  is configured to sample and an ``rng`` (numpy Generator) is given, one sampled segmentation drawn
  from that generator. The pipeline seeds ``rng`` from (run seed, epoch, document index), so a
  document's draw does not depend on which worker reads it, and a resumed run redraws the same.
- ``piece_bytes(id)``: the exact UTF-8 bytes a token stands for (b"" for special tokens), so that
  concatenating the bytes of ``encode(text)`` gives ``text.encode()`` back; bits per byte and the
  continuation probe are computed from these.
- ``decode(ids)``: text, decoding the concatenated bytes (a sample may split a character across
  byte pieces, so per-token decoding would be wrong).

A tokenizer must pickle (DataLoader workers receive a copy). For checkpoints it is *not* pickled:
``to_state()`` gives plain data (registered name, config dict, model file bytes) and
``Tokenizer.from_state(state)`` rebuilds it from that alone, so a checkpoint loads with
``torch.load(weights_only=True)`` and needs no cache or model file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass
class TokenizerConfig:
    name: str = "sentencepiece"
    vocab_size: int = 2048

    def check(self, run) -> list[str]:
        return []


class Tokenizer:
    Config = TokenizerConfig
    sampling: bool = False  # True when encode(text, rng) draws a random segmentation

    @classmethod
    def build(cls, cfg, train_texts: Callable[[], Iterable[str]], cache_dir: str) -> Tokenizer:
        """Train (or load from cache) a tokenizer on ``train_texts()`` (re-iterable)."""
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    @property
    def eos_id(self) -> int:
        raise NotImplementedError

    def encode(self, text: str, rng: Optional[np.random.Generator] = None) -> list[int]:
        raise NotImplementedError

    def piece_bytes(self, token_id: int) -> bytes:
        raise NotImplementedError

    def bytes_table(self) -> list[bytes]:
        return [self.piece_bytes(i) for i in range(self.vocab_size)]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(self.piece_bytes(int(i)) for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def describe(self) -> dict:
        return {"vocab_size": self.vocab_size, "sampling": self.sampling}

    # ---- plain-data state for checkpoints ------------------------------------------------------

    def model_bytes(self) -> bytes:
        """The model file's bytes, from which ``from_model_bytes`` rebuilds this tokenizer."""
        raise NotImplementedError

    @classmethod
    def from_model_bytes(cls, data: bytes, cfg) -> Tokenizer:
        """This tokenizer rebuilt from ``model_bytes()`` without its file. The default serves tokenizers
        backed by one model file, loaded by ``_load(bytes)`` (SentencePiece, unigram, BytePiece)."""
        tok = cls.__new__(cls)
        tok.cfg = cfg
        tok.model_path = getattr(cfg, "model_path", None) or "(model bytes from a checkpoint)"
        tok._load(data)
        return tok

    def content_hash(self) -> str:
        """sha256 of the model bytes this tokenizer encodes with (checkpoints record it; resume compares)."""
        import hashlib

        return hashlib.sha256(self.model_bytes()).hexdigest()

    def to_state(self) -> dict:
        """{"name": registered name, "config": the config as a dict, "model": bytes}: plain data only."""
        return {"name": self.registry_name, "config": dataclasses.asdict(self.cfg), "model": self.model_bytes()}

    @staticmethod
    def from_state(state: dict) -> Tokenizer:
        """The tokenizer ``to_state`` described (any registered kind)."""
        from lmlab.config import ConfigError, from_dict
        from lmlab.registry import TOKENIZER

        cls = TOKENIZER.get(state["name"])
        problems: list[str] = []
        cfg = from_dict(cls.Config, state["config"], "tokenizer", problems)
        if problems:
            raise ConfigError(problems)
        return cls.from_model_bytes(bytes(state["model"]), cfg)
