"""``tokenizer=hf``: the tokenizer of a local ``transformers`` checkpoint directory (``tokenizer.path``,
by default ``model.init_from``), wrapped so bits per byte still count real bytes.

- ``encode`` is the fast tokenizer's encoding without added special tokens (deterministic; no
  sampling). ``piece_bytes(id)`` is the exact byte string of the piece: byte-level (GPT-2) pieces
  are mapped back through the byte-to-unicode table, SentencePiece-style pieces turn U+2581 into a
  space and ``<0xXX>`` into that byte; special tokens are b"".
- Lossless (``decode_bytes(encode(t)) == t``) exactly when the tokenizer is: byte-level BPE and
  tokenizers exported by lmlab are; a Llama-2-style tokenizer with a dummy prefix adds one space per
  encoded text, which then counts as a byte. ``describe()["lossless"]`` records a probe of this.
- ``vocab_size`` is the model's embedding size from ``config.json`` when larger than the tokenizer's
  (padded vocabularies); the padding ids have empty pieces.
- Pickles as the tokenizer's JSON (a checkpoint needs nothing from the directory afterwards).

Needs ``transformers`` (the ``[hf]`` extra), imported only when this tokenizer is built.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lmlab.registry import TOKENIZER
from lmlab.tokenizers.base import Tokenizer, TokenizerConfig

_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@dataclass
class HFTokenizerConfig(TokenizerConfig):
    name: str = "hf"
    vocab_size: int = 0  # unused: the directory's tokenizer decides
    path: Optional[str] = None  # a local transformers checkpoint dir; null: model.init_from's

    def _path(self, run) -> Optional[str]:
        return self.path or getattr(getattr(run, "model", None), "init_from", None)

    def check(self, run) -> list[str]:
        path = self._path(run)
        if not path:
            return ["tokenizer.path is empty: tokenizer=hf needs a local transformers dir (or model.init_from)"]
        if not Path(path).is_dir():
            return [f"tokenizer.path={path} is not a directory"]
        return []

    def resolve(self, run) -> None:
        self.path = self._path(run)  # the saved config names the directory the tokenizer came from


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@TOKENIZER.register("hf")
class HFTokenizer(Tokenizer):
    Config = HFTokenizerConfig

    def __init__(self, tokenizer_json: str, eos_id: int, special_ids: Iterable[int], vocab_size: int,
                 cfg: Optional[HFTokenizerConfig] = None):
        self.cfg = cfg or self.Config()
        self._state = (tokenizer_json, int(eos_id), sorted(set(special_ids)), int(vocab_size))
        self._load()

    def _load(self) -> None:
        from tokenizers import Tokenizer as Backend

        tokenizer_json, eos_id, special_ids, vocab_size = self._state
        self.backend = Backend.from_str(tokenizer_json)
        self._eos, self._vocab = eos_id, max(vocab_size, self.backend.get_vocab_size(with_added_tokens=True))
        decoder = (json.loads(tokenizer_json).get("decoder") or {})
        byte_level = "ByteLevel" in json.dumps(decoder)
        table = _byte_decoder() if byte_level else None
        special = set(special_ids)
        self._bytes: list[bytes] = []
        for i in range(self._vocab):
            piece = self.backend.id_to_token(i)
            if piece is None or i in special:
                self._bytes.append(b"")
            elif table is not None:
                self._bytes.append(bytes(table[c] for c in piece) if all(c in table for c in piece)
                                   else piece.encode("utf-8"))
            elif m := _BYTE.match(piece):
                self._bytes.append(bytes([int(m.group(1), 16)]))
            else:
                self._bytes.append(piece.replace("\u2581", " ").encode("utf-8"))
        probe = "a b\n  c\u00e9"
        self.lossless = self.decode_bytes(self.encode(probe)) == probe.encode("utf-8")

    def __getstate__(self):
        return {"cfg": self.cfg, "state": self._state}

    def __setstate__(self, state):
        self.cfg, self._state = state["cfg"], state["state"]
        self._load()

    def model_bytes(self) -> bytes:
        """Plain data for the checkpoint (``Tokenizer.to_state``): the tokenizer.json and the ids lmlab uses."""
        tokenizer_json, eos_id, special_ids, vocab_size = self._state
        return json.dumps({"tokenizer_json": tokenizer_json, "eos_id": eos_id, "special_ids": special_ids,
                           "vocab_size": vocab_size}, sort_keys=True).encode("utf-8")

    @classmethod
    def from_model_bytes(cls, data: bytes, cfg) -> HFTokenizer:
        d = json.loads(bytes(data).decode("utf-8"))
        return cls(d["tokenizer_json"], d["eos_id"], d["special_ids"], d["vocab_size"], cfg)

    @classmethod
    def from_dir(cls, path: str, cfg: Optional[HFTokenizerConfig] = None) -> HFTokenizer:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"tokenizer.path={path}: no fast (tokenizers) tokenizer could be built there")
        if tok.eos_token_id is None:
            raise ValueError(f"tokenizer.path={path}: the tokenizer has no EOS token (lmlab separates documents with it)")
        vocab = 0
        cfg_file = Path(path) / "config.json"
        if cfg_file.is_file():
            vocab = int(json.loads(cfg_file.read_text()).get("vocab_size") or 0)
        return cls(backend.to_str(), tok.eos_token_id, tok.all_special_ids, vocab, cfg)

    @classmethod
    def build(cls, cfg: HFTokenizerConfig, train_texts: Callable[[], Iterable[str]], cache_dir: str):
        return cls.from_dir(cfg.path, cfg)

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def eos_id(self) -> int:
        return self._eos

    def encode(self, text: str, rng: Optional[np.random.Generator] = None) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def piece_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def bytes_table(self) -> list[bytes]:
        return list(self._bytes)

    def describe(self) -> dict:
        return {**super().describe(), "path": self.cfg.path, "lossless": self.lossless}
