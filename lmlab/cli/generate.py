"""Sample text from a trained checkpoint, streaming it to stdout as it is produced.

    python -m lmlab generate ckpt=outputs/RUN prompt="To be" max_new_tokens=200 temperature=0.8 \\
        top_k=50 top_p=0.95 seed=0 [heal=1]

``ckpt`` is a checkpoint file or a run directory (its ``checkpoints/last.ckpt``). ``top_k=1`` or
``temperature=0`` is greedy. The prompt is preceded by the end-of-text id (documents are separated by
it in training, so it reads as "start of a document"; ``bos=false`` turns that off) and generation
stops at that id. ``heal=k`` backs off the prompt's last k tokens and lets the model re-spell them
(token healing, ``lmlab.eval.healing``); the re-spelled prompt bytes are not printed again. Every
path runs on the one decoding loop (``lmlab.eval.generate``), with the KV cache unless
``use_cache=false``. Only the continuation goes to stdout, decoded incrementally from the tokens'
bytes (a character split across tokens appears once complete); statistics go to stderr.
"""

from __future__ import annotations

import codecs
import sys
import time
from dataclasses import dataclass
from typing import Optional

from lmlab.cli import arg, load_checkpoint, parse
from lmlab.eval.generate import generate


@dataclass
class Args:
    ckpt: str = arg(None, "checkpoint file or run directory", required=True)
    prompt: str = arg("", "text to continue (verbatim)")
    max_new_tokens: int = arg(200, "tokens to generate at most")
    temperature: float = arg(1.0, "softmax temperature; 0 = greedy")
    top_k: Optional[int] = arg(None, "keep the k most likely tokens (1 = greedy)")
    top_p: Optional[float] = arg(None, "keep the smallest set of tokens with this much mass, in (0, 1]")
    use_cache: bool = arg(True, "decode with the KV cache (false: re-run the whole sequence per token)")
    seed: Optional[int] = arg(None, "seed of the sampling generator (null: unseeded)")
    heal: int = arg(0, "token healing: back off this many prompt tokens (0 = off)")
    bos: bool = arg(True, "prepend the end-of-text id")
    stop: bool = arg(True, "stop at the end-of-text id")
    device: str = arg("cpu", "torch device")

    def check(self) -> list[str]:
        p = []
        if self.max_new_tokens < 0:
            p.append(f"max_new_tokens={self.max_new_tokens} must be >= 0")
        if self.temperature < 0:
            p.append(f"temperature={self.temperature} must be >= 0")
        if self.top_k is not None and self.top_k < 1:
            p.append(f"top_k={self.top_k} must be >= 1 (or null)")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            p.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.heal < 0:
            p.append(f"heal={self.heal} must be >= 0")
        return p


def parse_args(argv: list[str]) -> Args:
    return parse("generate", Args, argv).args


def main(argv: Optional[list[str]] = None, load=None, out=None, err=None) -> list[int]:
    """Run the command; returns the generated ids. ``load(path) -> (model, tokenizer, run)``."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out, err = out or sys.stdout, err or sys.stderr
    model, tokenizer, run = (load or load_checkpoint)(args.ckpt)
    if tokenizer is None:
        from lmlab.cli import UsageError

        raise UsageError(f"{args.ckpt} is an image-text (digits) checkpoint: generate samples text only")
    model = model.to(args.device).eval()
    ids = ([tokenizer.eos_id] if args.bos else []) + tokenizer.encode(args.prompt)
    if not ids:
        ids = [tokenizer.eos_id]
    hooks, skip = {}, 0
    if args.heal:
        from lmlab.eval.healing import Healer, VocabIndex

        state = Healer(VocabIndex.of(tokenizer), args.heal).start(ids)
        ids, skip = state.ids[:], len(state.removed)  # the removed bytes come back first: not reprinted
        hooks["constrain"] = lambda logits: state.constrain(logits)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    produced: list[int] = []
    t0 = time.perf_counter()
    t_first = None
    for tok in generate(
        model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
        use_cache=args.use_cache, stop_id=tokenizer.eos_id if args.stop else None, seed=args.seed, **hooks,
    ):
        if t_first is None:
            t_first = time.perf_counter()
        if args.heal:
            state.advance(tok)
        produced.append(tok)
        b = tokenizer.piece_bytes(tok)
        b, skip = b[skip:], max(0, skip - len(b))
        out.write(decoder.decode(b))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()
    t1 = time.perf_counter()
    n = len(produced)
    rate = (n - 1) / (t1 - t_first) if n > 1 and t1 > t_first else float("nan")
    cache = model.cache_elems_per_token()
    state_elems = sum(b.attn.cache_state_elems() for b in model.blocks)
    err.write(
        f"[generate] prompt {len(ids)} tokens, generated {n} tokens; first token after "
        f"{((t_first or t1) - t0) * 1e3:.1f} ms, then {rate:.1f} tokens/s "
        f"(use_cache={args.use_cache}, attention={run.attention.name}"
        + (f", healed {args.heal}" if args.heal else "") + f"); cache {cache} elems/token"
        f" over {len(model.blocks)} layers" + (f" + {state_elems} state elems" if state_elems else "") + "\n"
    )
    return produced
