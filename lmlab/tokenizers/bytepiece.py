"""``tokenizer=bytepiece``: load a BytePiece model (SPEC §4) and segment it with lmlab's lattice.

Model file (BytePiece's JSON): ``{base64(piece): [id, readable, count], ...}``; ids 0, 1, 2 are
``<pad>``, ``<bos>``, ``<eos>``, pieces are numbered from 3, and every single byte is a piece.
Score of a piece = log count - log(sum of counts), as BytePiece computes it.

Segmentation follows BytePiece ≥ 0.5 (S6 ``bytepiece.py``/``faster.pyx``):
- pre-processing: Unicode NFC, then chunks of "a line plus the newlines that follow it"
  (``re.findall('.*\\n+|.+')``); each chunk is segmented on its own, so no piece crosses a chunk;
- every byte is a start (``char_starts=False``), so a sample may split a multi-byte character
  (decode the concatenated bytes, never a single token);
- ``viterbi`` sums in float64 with strict ``>`` over end-ordered, longest-first candidates, as
  ``faster._tokenize`` does; ``sample`` is SPEC §3 perfect sampling (BytePiece's ``alpha ≥ 0``), and
  ``sample_v1`` the SPEC §2 sampler of BytePiece 0.4.
  The random stream is lmlab's (one 64-bit seed per chunk from the caller's Generator), not C ``rand()``.

Guarantees: ``decode(encode(t)) == NFC(t)`` (lossless only for NFC text, hence ``lossless=False``
when normalization changes the text); BytePiece *training* is not implemented, so ``build`` needs
``tokenizer.model_path``.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from base64 import b64decode
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from lmlab.registry import TOKENIZER
from lmlab.tokenizers.base import Tokenizer, TokenizerConfig
from lmlab.tokenizers.lattice import MODES, LatticeModel
from lmlab.tokenizers.lattice_modes import fix_surrogates, with_mode

_CHUNK = re.compile(r".*\n+|.+")
SPECIALS = ("<pad>", "<bos>", "<eos>")


@dataclass
class BytePieceConfig(TokenizerConfig):
    name: str = "bytepiece"
    vocab_size: int = 0  # taken from the model file
    model_path: Optional[str] = None
    mode: Literal["viterbi", "sample", "sample_v1"] = "viterbi"
    alpha: float = 0.2  # as tokenizer=unigram (see unigram.py for the choice)

    def check(self, run) -> list[str]:
        p = []
        if not self.model_path:
            p.append("tokenizer.model_path: tokenizer=bytepiece loads a BytePiece JSON model "
                     "(training BytePiece models is not implemented)")
        if self.alpha < 0:
            p.append(f"tokenizer.alpha={self.alpha} must be >= 0 (0 samples uniformly over segmentations)")
        return p


def normalize(text: str) -> list[bytes]:
    """BytePiece's pre-processing: NFC, then line chunks (each keeps its trailing newlines).
    Lone surrogates become U+FFFD, as in ``tokenizer=unigram``."""
    text = unicodedata.normalize("NFC", fix_surrogates(text))
    return [t.encode("utf-8") for t in _CHUNK.findall(text)]


def load_bytepiece(path: str) -> tuple[LatticeModel, list[bytes]]:
    with open(path, "rb") as f:
        return parse_bytepiece(f.read(), path)


def parse_bytepiece(data: bytes, path: str) -> tuple[LatticeModel, list[bytes]]:
    """A BytePiece model file's bytes -> (lattice model, piece bytes table); ``path`` names it in errors."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a BytePiece model (not JSON: {e})") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) and len(v) == 3 for v in raw.values()):
        raise ValueError(f"{path}: not a BytePiece model (expected {{base64(piece): [id, text, count]}})")
    pieces = {b64decode(k): int(v[0]) for k, v in raw.items()}
    counts = {b64decode(k): float(v[2]) for k, v in raw.items()}
    size = max(pieces.values()) + 1
    if sorted(pieces.values()) != list(range(3, size)):
        raise ValueError(f"{path}: piece ids must be 3..{size - 1}, each once")
    if any(c <= 0 for c in counts.values()):
        raise ValueError(f"{path}: piece counts must be positive")
    log_total = math.log(sum(counts.values()))
    scores = np.zeros(size)
    table: list[bytes] = [b""] * size
    byte_ids = np.full(256, -1, dtype=np.int32)
    for k, i in pieces.items():
        scores[i] = math.log(counts[k]) - log_total
        table[i] = k
        if len(k) == 1:
            byte_ids[k[0]] = i
    if (byte_ids < 0).any():
        missing = [hex(c) for c in np.nonzero(byte_ids < 0)[0][:5]]
        raise ValueError(f"{path}: a BytePiece model holds all 256 bytes; missing {', '.join(missing)}...")
    model = LatticeModel.build(pieces, scores, byte_ids, char_starts=False, fallback=False, exact32=False)
    return model, table


@TOKENIZER.register("bytepiece")
class BytePieceTokenizer(Tokenizer):
    Config = BytePieceConfig
    lossless = False  # up to NFC

    def __init__(self, model_path: str, cfg: Optional[BytePieceConfig] = None):
        self.cfg = cfg or BytePieceConfig(model_path=str(model_path))
        if self.cfg.mode not in MODES or self.cfg.alpha < 0:
            raise ValueError(f"tokenizer.mode={self.cfg.mode!r} / alpha={self.cfg.alpha}: mode must be one of "
                             f"{', '.join(MODES)} and alpha >= 0")
        self.model_path = str(model_path)
        with open(self.model_path, "rb") as f:
            self._load(f.read())

    def _load(self, raw: bytes) -> None:
        self._raw = raw
        self.model, self._bytes = parse_bytepiece(raw, self.model_path)
        self.sampling = self.cfg.mode != "viterbi"
        from lmlab.tokenizers.lattice_fast import warm_up

        warm_up(self.model)

    def __getstate__(self):
        return dict(self.__dict__)

    def __setstate__(self, state):
        self.__dict__.update(state)
        from lmlab.tokenizers.lattice_fast import warm_up

        warm_up(self.model)

    def model_bytes(self) -> bytes:
        return self._raw

    @classmethod
    def build(cls, cfg: BytePieceConfig, train_texts: Callable[[], Iterable[str]], cache_dir: str):
        if not cfg.model_path:
            raise ValueError("tokenizer=bytepiece needs tokenizer.model_path (training is not implemented)")
        return cls(cfg.model_path, cfg)

    @property
    def vocab_size(self) -> int:
        return len(self._bytes)

    @property
    def eos_id(self) -> int:
        return 2

    def encode(self, text: str, rng: Optional[np.random.Generator] = None) -> list[int]:
        from lmlab.tokenizers.lattice_fast import segment

        sample = rng is not None and self.sampling
        out: list[int] = []
        for chunk in normalize(text):
            seed = int(rng.integers(0, 2**63)) if sample else 0
            mode = self.cfg.mode if sample else "viterbi"
            out.extend(segment(self.model, chunk, mode, self.cfg.alpha, seed).tolist())
        return out

    def with_mode(self, mode: Optional[str] = None, alpha: Optional[float] = None) -> BytePieceTokenizer:
        return with_mode(self, mode, alpha)

    def piece_bytes(self, token_id: int) -> bytes:
        return self._bytes[token_id]

    def bytes_table(self) -> list[bytes]:
        return list(self._bytes)

    def id_to_piece(self, token_id: int) -> str:
        i = int(token_id)
        return SPECIALS[i] if i < 3 else self._bytes[i].decode("utf-8", "backslashreplace")

    def describe(self) -> dict:
        return {**super().describe(), "mode": self.cfg.mode, "alpha": self.cfg.alpha,
                "model_path": self.model_path}
