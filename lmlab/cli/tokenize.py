"""Look at segmentations: ``python -m lmlab tokenize train|encode|samples|stats [key=value ...]``.

The tokenizer comes from ``model=PATH`` (a SentencePiece *unigram* .model, segmented by lmlab's
``tokenizer=unigram``, or a BytePiece ``.json`` model, ``tokenizer=bytepiece``) or, without it, from the
run config composed from conf/ with training overrides (every key that is not this command's), exactly
as training builds it (trained on the configured corpus, or loaded from the cache)::

    python -m lmlab tokenize train tokenizer=unigram data=pystdlib tokenizer.vocab_size=1000
    echo "def f(x): return x" | python -m lmlab tokenize encode model=sp.model pieces=true
    echo "hello" | python -m lmlab tokenize encode tokenizer=unigram mode=sample alpha=0.2 seed=1
    python -m lmlab tokenize samples "subword regularization" n=8 model=sp.model alpha=0.1
    python -m lmlab tokenize stats corpus.txt model=sp.model mode=sample

``samples`` takes its sentence and ``stats`` its file as the argument after the action (or ``text=``,
``file=``). ``mode``/``alpha`` apply to ``tokenizer=unigram|bytepiece`` (and ``model=``); any other
configured tokenizer encodes as configured. ``encode`` draws every line's segmentation from one
generator seeded with ``seed``, so the output is reproducible. Input that is not valid UTF-8 is
decoded with U+FFFD.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from lmlab.cli import UsageError, arg, compose_run, parse
from lmlab.config import did_you_mean
from lmlab.tokenizers.lattice import MODES


def load_tokenizer(model: str | None, overrides: list[str]):
    """A tokenizer from a model file or from the composed config (training it if needed)."""
    if model:
        if overrides:
            raise UsageError(f"give either model= or config overrides, not both ({' '.join(overrides)})")
        if not Path(model).is_file():
            raise UsageError(f"model={model}: no such file")
        if model.endswith(".json"):  # a BytePiece model
            from lmlab.tokenizers.bytepiece import BytePieceTokenizer

            return BytePieceTokenizer(model)
        from lmlab.tokenizers.unigram import UnigramConfig, UnigramTokenizer

        return UnigramTokenizer(model, UnigramConfig())
    from lmlab.data.corpus import build_tokenizer

    return build_tokenizer(compose_run(overrides))


def with_mode(tok, mode: str | None, alpha: float | None):
    """The same tokenizer with another mode/alpha (``tokenizer=unigram`` only)."""
    if mode is None and alpha is None:
        return tok
    if not hasattr(tok, "with_mode"):
        raise UsageError(f"mode/alpha need tokenizer=unigram or bytepiece (or model=); this is {type(tok).__name__}")
    try:
        return tok.with_mode(mode, alpha)
    except ValueError as e:
        raise UsageError(str(e)) from None


def piece_str(tok, i: int) -> str:
    if hasattr(tok, "id_to_piece"):  # SentencePiece spells ▁ for a space, <0x0A> for a byte
        return tok.id_to_piece(int(i))
    if hasattr(tok, "sp"):
        return tok.sp.id_to_piece(int(i))
    return tok.piece_bytes(i).decode("utf-8", "backslashreplace")


def read_lines(stream) -> Iterable[str]:
    for raw in stream.buffer if hasattr(stream, "buffer") else stream:
        line = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        yield line[:-1] if line.endswith("\n") else line


def cmd_encode(tok, args, out) -> None:
    rng = np.random.default_rng(args.seed)
    for line in read_lines(sys.stdin):
        ids = tok.encode(line, rng if tok.sampling else None)
        out.write(" ".join(piece_str(tok, i) if args.pieces else str(i) for i in ids) + "\n")


def cmd_samples(tok, args, out) -> None:
    if not tok.sampling:
        tok = with_mode(tok, "sample", None)
    rng = np.random.default_rng(args.seed)
    rows = [("viterbi", tok.encode(args.text))]
    rows += [(f"#{k + 1}", tok.encode(args.text, rng)) for k in range(args.n)]
    out.write(f"{args.text!r}  ({len(args.text.encode())} bytes; {tok.describe().get('mode', '')} "
              f"alpha={getattr(tok.cfg, 'alpha', '')})\n")
    for name, ids in rows:
        out.write(f"{name:>8} {len(ids):3d} | " + " | ".join(piece_str(tok, i) for i in ids) + "\n")


def chunks(text: str, size: int = 4000) -> Iterable[str]:
    """Line-aligned chunks (documents for the stats; a line longer than ``size`` stays whole)."""
    buf, n = [], 0
    for line in text.splitlines(keepends=True):
        buf.append(line)
        n += len(line)
        if n >= size:
            yield "".join(buf)
            buf, n = [], 0
    if buf:
        yield "".join(buf)


def cmd_stats(tok, args, out) -> None:
    if not Path(args.file).is_file():
        raise UsageError(f"file={args.file}: no such file")
    with open(args.file, "rb") as f:
        text = f.read().decode("utf-8", "replace")
    docs = list(chunks(text))
    n_bytes = sum(len(d.encode()) for d in docs)
    det = Counter()
    for d in docs:
        det.update(tok.encode(d))
    n_det = sum(det.values())
    byte_ids = {i for i in det if hasattr(tok, "sp") and tok.sp.is_byte(i)}
    out.write(f"file        {args.file}: {n_bytes} bytes in {len(docs)} chunks\n")
    out.write(f"tokenizer   {tok.describe()}\n")
    out.write(f"viterbi     {n_det} tokens, {n_bytes / max(n_det, 1):.3f} bytes/token\n")
    if tok.sampling:
        rng = np.random.default_rng(args.seed)
        n_s = sum(len(tok.encode(d, rng)) for d in docs)
        out.write(f"sampled     {n_s} tokens, {n_bytes / max(n_s, 1):.3f} bytes/token "
                  f"(x{n_s / max(n_det, 1):.3f} tokens; mode={tok.cfg.mode} alpha={tok.cfg.alpha})\n")
    used = len(det)
    out.write(f"vocab use   {used} of {tok.vocab_size} ids ({used / tok.vocab_size:.1%}); "
              f"byte-fallback tokens {sum(det[i] for i in byte_ids) / max(n_det, 1):.2%}\n")
    top = ", ".join(f"{piece_str(tok, i)!r}:{c}" for i, c in det.most_common(args.top))
    out.write(f"top {args.top:<7} {top}\n")


def cmd_train(tok, args, out) -> None:
    d = tok.describe()
    out.write(f"{type(tok).__name__}: " + ", ".join(f"{k}={v}" for k, v in d.items()) + "\n")


ACTIONS = {"train": cmd_train, "encode": cmd_encode, "samples": cmd_samples, "stats": cmd_stats}
USAGE = "python -m lmlab tokenize train|encode|samples TEXT|stats FILE [key=value ...] [training overrides]"


@dataclass
class Args:
    model: Optional[str] = arg(None, "a SentencePiece unigram .model or BytePiece .json (else: the configured tokenizer)")
    mode: Optional[str] = arg(None, f"segmentation mode: {', '.join(MODES)}")
    alpha: Optional[float] = arg(None, "sampling sharpness (mode=sample)")
    seed: int = arg(0, "seed of the segmentation sampler")
    pieces: bool = arg(False, "encode: print pieces instead of ids")
    text: Optional[str] = arg(None, "samples: the sentence (or the argument after the action)")
    n: int = arg(8, "samples: how many sampled segmentations")
    file: Optional[str] = arg(None, "stats: the text file (or the argument after the action)")
    top: int = arg(10, "stats: how many of the most frequent tokens to list")

    def check(self) -> list[str]:
        p = []
        if self.mode is not None and self.mode not in MODES:
            p.append(f"mode={self.mode} is not one of {', '.join(MODES)}{did_you_mean(self.mode, MODES)}")
        if self.n < 1:
            p.append(f"n={self.n} must be >= 1")
        return p


def main(argv: list[str] | None = None, out=None) -> None:
    out = out or sys.stdout
    p = parse("tokenize", Args, sys.argv[1:] if argv is None else argv, positional=True, overrides=True)
    args, pos = p.args, list(p.positional)
    if not pos or pos[0] not in ACTIONS:
        got = f" {pos[0]!r}" if pos else ""
        raise UsageError(f"tokenize needs an action{got}{did_you_mean(pos[0], ACTIONS) if pos else ''}: "
                         f"one of {', '.join(ACTIONS)}")
    action, extra = pos[0], pos[1:]
    slot = {"samples": "text", "stats": "file"}.get(action)
    if extra and (slot is None or getattr(args, slot) is not None or len(extra) > 1):
        raise UsageError(f"tokenize {action}: unexpected argument(s) {' '.join(map(repr, extra))}")
    if extra:
        setattr(args, slot, extra[0])
    if slot and getattr(args, slot) is None:
        raise UsageError(f"tokenize {action} needs {'a sentence' if slot == 'text' else 'a file'} "
                         f"(after the action, or {slot}=...)")
    tok = load_tokenizer(args.model, p.overrides)
    if action != "train":
        tok = with_mode(tok, args.mode, args.alpha)
    ACTIONS[action](tok, args, out)
