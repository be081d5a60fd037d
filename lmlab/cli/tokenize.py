"""Look at segmentations: ``python -m lmlab.tokenize train|encode|samples|stats``.

The tokenizer comes from ``--model PATH`` (a SentencePiece *unigram* .model, segmented by lmlab's
``tokenizer=unigram``, or a BytePiece ``.json`` model, ``tokenizer=bytepiece``) or, without it, from the run config composed from conf/ with Hydra overrides,
exactly as training builds it (trained on the configured corpus, or loaded from the cache)::

    python -m lmlab.tokenize train tokenizer=unigram data=pystdlib tokenizer.vocab_size=1000
    echo "def f(x): return x" | python -m lmlab.tokenize encode --model sp.model --pieces
    echo "hello" | python -m lmlab.tokenize encode tokenizer=unigram --mode sample --alpha 0.2 --seed 1
    python -m lmlab.tokenize samples "subword regularization" -n 8 --model sp.model --alpha 0.1
    python -m lmlab.tokenize stats corpus.txt --model sp.model --mode sample

``--mode/--alpha`` apply to ``tokenizer=unigram|bytepiece`` (and ``--model``); any other configured
tokenizer encodes as configured. ``encode`` draws every line's segmentation from one generator seeded with
``--seed``, so the output is reproducible. Input that is not valid UTF-8 is decoded with U+FFFD.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Iterable

import numpy as np

from lmlab.tokenizers.lattice import MODES


def load_tokenizer(model: str | None, overrides: list[str]):
    """A tokenizer from a .model file or from the composed config (training it if needed)."""
    if model:
        if overrides:
            raise SystemExit(f"give either --model or config overrides, not both ({' '.join(overrides)})")
        if model.endswith(".json"):  # a BytePiece model
            from lmlab.tokenizers.bytepiece import BytePieceTokenizer

            return BytePieceTokenizer(model)
        from lmlab.tokenizers.unigram import UnigramConfig, UnigramTokenizer

        return UnigramTokenizer(model, UnigramConfig())
    from lmlab.config import compose
    from lmlab.data.corpus import build_tokenizer

    return build_tokenizer(compose(overrides))


def with_mode(tok, mode: str | None, alpha: float | None):
    """The same tokenizer with another mode/alpha (``tokenizer=unigram`` only)."""
    if mode is None and alpha is None:
        return tok
    if not hasattr(tok, "with_mode"):
        raise SystemExit(f"--mode/--alpha need tokenizer=unigram (or --model); this is {type(tok).__name__}")
    try:
        return tok.with_mode(mode, alpha)
    except ValueError as e:
        raise SystemExit(str(e)) from None


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


def main(argv: list[str] | None = None, out=None) -> None:
    out = out or sys.stdout
    p = argparse.ArgumentParser(prog="python -m lmlab.tokenize", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, sampling=True):
        sp.add_argument("--model", help="a SentencePiece unigram .model (else: the configured tokenizer)")
        if sampling:
            sp.add_argument("--mode", choices=MODES)
            sp.add_argument("--alpha", type=float)
            sp.add_argument("--seed", type=int, default=0)
        sp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. tokenizer=unigram data=pystdlib")

    common(sub.add_parser("train", help="train (or load from the cache) the configured tokenizer"), False)
    e = sub.add_parser("encode", help="stdin lines -> ids (or --pieces) per line")
    e.add_argument("--pieces", action="store_true")
    common(e)
    s = sub.add_parser("samples", help="N sampled segmentations of one sentence")
    s.add_argument("text")
    s.add_argument("-n", type=int, default=8)
    common(s)
    st = sub.add_parser("stats", help="bytes per token and vocabulary use on a text file")
    st.add_argument("file")
    st.add_argument("--top", type=int, default=10)
    common(st)
    args, rest = p.parse_known_args(argv)  # overrides may also follow the options
    flags = [r for r in rest if r.startswith("-")]
    if flags:
        p.error(f"unrecognized arguments: {' '.join(flags)}")
    args.overrides = list(args.overrides) + rest

    tok = load_tokenizer(args.model, args.overrides)
    if args.cmd != "train":
        tok = with_mode(tok, args.mode, args.alpha)
    {"train": cmd_train, "encode": cmd_encode, "samples": cmd_samples, "stats": cmd_stats}[args.cmd](
        tok, args, out)


if __name__ == "__main__":
    main()
