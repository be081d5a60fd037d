"""``tokenizer=bytes``: one token per UTF-8 byte; nothing to train (issue 15's byte-level control).

Ids: 0 ``<pad>``, 1 ``<bos>``, 2 ``<eos>`` (BytePiece's specials, SPEC §4), then byte b is id b + 3;
``vocab_size`` is always 259. ``<eos>`` separates documents in the data pipeline; ``<pad>`` and
``<bos>`` are never produced by ``encode`` and stand for no bytes.

Guarantees:
- ``decode_bytes(encode(t)) == t.encode("utf-8")`` for every string without lone surrogates (no
  normalization of any kind); a lone surrogate becomes U+FFFD first, as in the lattice tokenizers.
- Every non-special id stands for exactly one byte, so a model's bits per byte is its loss per token
  divided by ln 2, and no prompt can end inside a token (the continuation probe therefore cuts
  inside *words* for this tokenizer, see ``lmlab.eval.probe``).
- Deterministic: ``encode(text, rng)`` ignores ``rng`` (``sampling`` is False).
- The checkpoint state holds a one-line JSON description of this layout; ``from_model_bytes``
  refuses any other layout rather than reading ids with a different meaning.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from lmlab.registry import TOKENIZER
from lmlab.tokenizers.base import Tokenizer, TokenizerConfig
from lmlab.tokenizers.lattice_modes import fix_surrogates

SPECIALS = ("<pad>", "<bos>", "<eos>")
OFFSET = len(SPECIALS)
VOCAB = 256 + OFFSET
_LAYOUT = {"kind": "bytes", "specials": list(SPECIALS), "byte_offset": OFFSET}


@dataclass
class BytesConfig(TokenizerConfig):
    name: str = "bytes"
    vocab_size: int = VOCAB  # fixed: 256 bytes + 3 specials

    def check(self, run) -> list[str]:
        if self.vocab_size != VOCAB:
            return [f"tokenizer.vocab_size={self.vocab_size}: tokenizer=bytes always has {VOCAB} ids "
                    f"(256 bytes + {', '.join(SPECIALS)}); drop the override"]
        return []


@TOKENIZER.register("bytes")
class BytesTokenizer(Tokenizer):
    Config = BytesConfig
    sampling = False
    lossless = True
    probe_cut_unit = "word"  # no token spans two characters: the probe cuts inside words instead

    def __init__(self, cfg: Optional[BytesConfig] = None):
        self.cfg = cfg or BytesConfig()
        self._bytes = [b""] * OFFSET + [bytes([b]) for b in range(256)]

    @classmethod
    def build(cls, cfg: BytesConfig, train_texts: Callable[[], Iterable[str]], cache_dir: str) -> BytesTokenizer:
        return cls(cfg)  # nothing to train: train_texts is never read

    @property
    def vocab_size(self) -> int:
        return VOCAB

    @property
    def eos_id(self) -> int:
        return SPECIALS.index("<eos>")

    def encode(self, text: str, rng: Optional[np.random.Generator] = None) -> list[int]:
        raw = fix_surrogates(text).encode("utf-8")
        return (np.frombuffer(raw, dtype=np.uint8).astype(np.int64) + OFFSET).tolist()

    def piece_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def bytes_table(self) -> list[bytes]:
        return list(self._bytes)

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return bytes(int(i) - OFFSET for i in ids if int(i) >= OFFSET)

    def id_to_piece(self, token_id: int) -> str:
        i = int(token_id)
        return SPECIALS[i] if i < OFFSET else f"<0x{i - OFFSET:02X}>"

    def describe(self) -> dict:
        return {**super().describe(), "lossless": True, "bytes_per_token": 1}

    def model_bytes(self) -> bytes:
        return json.dumps(_LAYOUT, sort_keys=True).encode()

    @classmethod
    def from_model_bytes(cls, data: bytes, cfg) -> BytesTokenizer:
        try:
            layout = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            layout = None
        if layout != _LAYOUT:
            raise ValueError(f"tokenizer=bytes: the stored layout {bytes(data)[:80]!r} is not this version's "
                             f"{_LAYOUT} (ids would mean different bytes)")
        return cls(cfg)
