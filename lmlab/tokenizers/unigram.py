"""``tokenizer=unigram``: lmlab's own unigram segmenter over a SentencePiece unigram model.

Pieces and scores come from a SentencePiece *unigram* model (trained and cached exactly as
``tokenizer=sentencepiece`` does: same settings, same cache directory, byte fallback on); the
segmentation is lmlab's (``lattice.py`` reference, ``lattice_fast.py`` compiled):

- ``mode=viterbi`` (SPEC §1): deterministic; ids identical to ``SentencePieceProcessor.encode`` of the
  same model (the lattice, the float32 arithmetic and the tie-breaking follow SentencePiece's encoder;
  tests check it id for id on held-out text with Chinese and unusual characters).
- ``mode=sample`` (SPEC §3): perfect sampling, P(seg) ∝ exp(alpha * score(seg)) exactly, one pass.
  Same distribution as SentencePiece's ``nbest_size=-1`` sampler (tests compare them).
- ``mode=sample_v1`` (SPEC §2): Su's original Viterbi Sampling, biased; for ablations only.

``encode(text)`` (no generator) is always the deterministic Viterbi segmentation, so validation and
bits per byte never sample. ``encode(text, rng)`` in a sampling mode draws one 64-bit seed from the
numpy Generator and segments with it: the sample is a pure function of the Generator's state.

Byte pieces enter the lattice only as the expansion of a character that has no piece (SentencePiece's
unknown node, score min_score - 10, then byte fallback); see ``lattice.py``. A sample therefore never
splits a character that has a piece, and an unknown character always becomes its UTF-8 bytes.

alpha (inverse temperature: P(seg) ∝ p(seg)^alpha; 0 = uniform over segmentations, large = Viterbi).
Default 0.2, one of the two values S2/S3 use (0.1, 0.2), chosen from the measured token inflation
(``scripts/bench/tokenizer.py``, 2048-piece models, held-out documents; lmlab ``sample`` and
SentencePiece's sampler agree to 0.01 at every alpha):

    tokens per Viterbi token    alpha=0.05  0.1    0.2    0.3    0.5    1.0
    data=shakespeare                  1.75  1.58   1.31   1.16   1.06   1.01   (Viterbi 2.68 bytes/token)
    data=pystdlib                     1.78  1.59   1.34   1.23   1.11   1.03   (Viterbi 2.79 bytes/token)

At alpha=0.1 (SentencePiece's default) a sampled document has ~1.6x the tokens of its Viterbi
segmentation, so a seq_len window holds ~37% fewer bytes and every step sees less text: the
deterministic-vs-sampled comparison would mostly measure that. At alpha=0.2 (~1.3x) every
segmentation keeps a non-zero probability and the ranking by score is kept (SPEC §3's "perfect"),
with about half the extra tokens. Set ``tokenizer.alpha=0.1`` to match ``tokenizer=sentencepiece
sample=true`` at its default.

Bad input: "" gives []; a lone surrogate (e.g. from ``surrogateescape``) becomes U+FFFD (SentencePiece
itself refuses such strings); characters never seen in training become byte pieces; a BPE (or any
non-unigram) model raises ``ValueError`` naming the file and its type; alpha < 0 is a config error.
Losslessness (``decode(encode(t)) == t``) holds for models with identity normalization and no dummy
prefix, i.e. the ones lmlab trains, except that a literal U+2581 decodes as a space (as in
SentencePiece). Other models are normalized with SentencePiece's own normalizer (``lossless=False``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

import numpy as np

from lmlab.registry import TOKENIZER
from lmlab.tokenizers.lattice import MODES, LatticeModel
from lmlab.tokenizers.lattice_modes import fix_surrogates, with_mode
from lmlab.tokenizers.sentencepiece import WHITESPACE, SentencePieceConfig, SentencePieceTokenizer

_UNK_PENALTY = np.float32(10.0)  # SentencePiece's kUnkPenalty


@dataclass
class UnigramConfig(SentencePieceConfig):
    name: str = "unigram"
    mode: Literal["viterbi", "sample", "sample_v1"] = "viterbi"
    alpha: float = 0.2  # inverse temperature of the sampled modes (SPEC §3); why 0.2: module docstring
    vocab_size: int = 2048  # the experiments' unigram vocabulary (sentencepiece's default moved to 8192)

    def check(self, run) -> list[str]:
        p = super().check(run)
        if self.model_type != "unigram":
            p.append(f"tokenizer.model_type={self.model_type}: tokenizer=unigram needs a unigram model "
                     "(use tokenizer=sentencepiece for BPE)")
        return p

    def sampling_problems(self) -> list[str]:
        p = []
        if self.alpha < 0:
            p.append(f"tokenizer.alpha={self.alpha} must be >= 0 (0 samples uniformly over segmentations)")
        if self.sample:
            p.append("tokenizer.sample=true selects SentencePiece's own sampler (tokenizer=sentencepiece); "
                     "tokenizer=unigram samples with tokenizer.mode=sample or sample_v1")
        return p




def load_lattice_model(proto: bytes, where: str = "model",
                       build: bool = True) -> tuple[Optional[LatticeModel], dict]:
    """Read pieces, scores and normalization settings from a SentencePiece unigram model proto;
    build the lattice model (trie) unless ``build`` is false."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    try:
        m.ParseFromString(proto)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own DecodeError
        raise ValueError(f"{where}: not a SentencePiece model ({e})") from None
    kind = pb.TrainerSpec.ModelType.Name(m.trainer_spec.model_type)
    if kind != "UNIGRAM":
        raise ValueError(f"{where} is a SentencePiece {kind} model; tokenizer=unigram needs a UNIGRAM "
                         "model (its scores are piece log-probabilities). Use tokenizer=sentencepiece for it.")
    T = pb.ModelProto.SentencePiece
    normal = [p.score for p in m.pieces if p.type == T.NORMAL]
    if not normal:
        raise ValueError(f"{where}: the model has no normal pieces")
    min_score, max_score = np.float32(min(normal)), np.float32(max(normal))
    pieces: dict[bytes, int] = {}
    scores = np.zeros(len(m.pieces), dtype=np.float32)
    byte_ids = np.full(256, -1, dtype=np.int32)
    for i, p in enumerate(m.pieces):
        if p.type == T.NORMAL:
            pieces[p.piece.encode("utf-8")] = i
            scores[i] = p.score
        elif p.type == T.USER_DEFINED:  # SentencePiece's bonus so that they are always chosen
            key = p.piece.encode("utf-8")
            pieces[key] = i
            scores[i] = np.float32(len(key) * float(max_score) - 0.1)
        elif p.type == T.BYTE:
            byte_ids[int(p.piece[1:-1], 16)] = i
    if (byte_ids < 0).any():
        raise ValueError(f"{where}: the model has no byte pieces (train it with byte_fallback=true); "
                         "without them unknown characters cannot be encoded losslessly")
    norm = m.normalizer_spec
    plain = (not norm.precompiled_charsmap and not norm.add_dummy_prefix
             and not norm.remove_extra_whitespaces)
    info = {"identity": plain, "escape_whitespaces": bool(norm.escape_whitespaces),
            "normalization": norm.name}
    if not build:
        return None, info
    model = LatticeModel.build(pieces, scores, byte_ids, unk_score=min_score - _UNK_PENALTY,
                               char_starts=True)
    return model, info


@TOKENIZER.register("unigram")
class UnigramTokenizer(SentencePieceTokenizer):
    """SentencePieceTokenizer's model, training cache, byte table and ids; lmlab's own segmenter."""

    Config = UnigramConfig

    def _load(self, proto: bytes, model: Optional[LatticeModel] = None) -> None:
        if self.cfg.mode not in MODES:
            raise ValueError(f"tokenizer.mode={self.cfg.mode!r} is not one of {', '.join(MODES)}")
        if self.cfg.alpha < 0:
            raise ValueError(f"tokenizer.alpha={self.cfg.alpha} must be >= 0")
        built, info = load_lattice_model(proto, self.model_path, build=model is None)
        super()._load(proto)
        self.model = model if model is not None else built
        self.lossless = info["identity"]
        self._escape = info["escape_whitespaces"]
        self.sampling = self.cfg.mode != "viterbi"
        from lmlab.tokenizers.lattice_fast import warm_up

        warm_up(self.model)

    def __getstate__(self):
        # the built lattice travels too, so a DataLoader worker does not rebuild the trie
        return {**super().__getstate__(), "model": self.model}

    def __setstate__(self, state):
        self.cfg, self.model_path = state["cfg"], state["model_path"]
        self._load(state["proto"], state.get("model"))

    # ---- the Tokenizer interface --------------------------------------------------------------

    def normalize(self, text: str) -> bytes:
        """The UTF-8 bytes the lattice is built on (SentencePiece's normalized text)."""
        try:
            raw = text.encode("utf-8")
        except UnicodeEncodeError:
            text = fix_surrogates(text)
            raw = text.encode("utf-8")
        if not self.lossless:
            return self.sp.normalize(text).encode("utf-8")
        return raw.replace(b" ", WHITESPACE.encode()) if self._escape else raw

    def encode(self, text: str, rng: Optional[np.random.Generator] = None) -> list[int]:
        if rng is None or not self.sampling:
            return self.segment(text, "viterbi")
        return self.segment(text, self.cfg.mode, self.cfg.alpha, int(rng.integers(0, 2**63)))

    def segment(self, text: str, mode: str = "viterbi", alpha: Optional[float] = None,
                seed: int = 0) -> list[int]:
        """Any mode with an explicit alpha and 64-bit seed (the CLI and benchmarks use this)."""
        from lmlab.tokenizers.lattice_fast import segment

        if mode not in MODES:
            raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
        alpha = self.cfg.alpha if alpha is None else float(alpha)
        if alpha < 0:
            raise ValueError(f"alpha={alpha} must be >= 0")
        if not text:
            return []
        return segment(self.model, self.normalize(text), mode, alpha, seed).tolist()

    def with_mode(self, mode: Optional[str] = None, alpha: Optional[float] = None) -> UnigramTokenizer:
        return with_mode(self, mode, alpha)

    def id_to_piece(self, token_id: int) -> str:
        return self.sp.id_to_piece(int(token_id))

    def describe(self) -> dict:
        return {**super().describe(), "mode": self.cfg.mode, "alpha": self.cfg.alpha,
                "model_path": self.model_path, "lossless": self.lossless}
