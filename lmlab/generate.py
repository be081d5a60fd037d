"""Sample text from a trained checkpoint, streaming it to stdout as it is produced.

    python -m lmlab.generate ckpt=outputs/RUN/checkpoints/last.ckpt prompt="To be" \\
        max_new_tokens=200 temperature=0.8 top_k=50 top_p=0.95 use_cache=true seed=0

Arguments are ``key=value`` (typed and checked; an unknown key is an error). ``top_k=1`` or
``temperature=0`` is greedy. The prompt is preceded by the end-of-text id (documents are separated by
it in training, so it reads as "start of a document"; ``bos=false`` turns that off) and generation
stops at that id. Only the continuation goes to stdout, decoded incrementally from the tokens' bytes
(a character split across tokens appears once complete); statistics go to stderr.
"""

from __future__ import annotations

import codecs
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import OmegaConf

from lmlab.eval.generate import generate


@dataclass
class GenerateArgs:
    ckpt: str = "???"
    prompt: str = ""
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    use_cache: bool = True
    seed: Optional[int] = None
    bos: bool = True  # prepend the end-of-text id
    stop: bool = True  # stop at the end-of-text id
    device: str = "cpu"


RAW_KEYS = ("prompt", "ckpt")  # free text: taken verbatim, never parsed as YAML ("ROMEO:" is no dict)


def parse_args(argv: list[str]) -> GenerateArgs:
    raw = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in RAW_KEYS and "=" in a}
    rest = [a for a in argv if a.split("=", 1)[0] not in raw]
    cfg = OmegaConf.merge(OmegaConf.structured(GenerateArgs), OmegaConf.from_dotlist(rest), raw)
    args = OmegaConf.to_object(cfg)  # raises on a missing ckpt, an unknown key or a wrong type
    if args.max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={args.max_new_tokens} must be >= 0")
    if args.top_p is not None and not 0.0 < args.top_p <= 1.0:
        raise ValueError(f"top_p={args.top_p} must be in (0, 1]")
    return args


def main(argv: Optional[list[str]] = None, load=None, out=None, err=None) -> list[int]:
    """Run the CLI; returns the generated ids. ``load(path) -> (model, tokenizer, run)``."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out, err = out or sys.stdout, err or sys.stderr
    if load is None:
        from lmlab.train.checkpoint import load_checkpoint

        def load(path):
            c = load_checkpoint(path)
            return c.model, c.tokenizer, c.run
    model, tokenizer, run = load(args.ckpt)
    model = model.to(args.device).eval()
    ids = ([tokenizer.eos_id] if args.bos else []) + tokenizer.encode(args.prompt)
    if not ids:
        ids = [tokenizer.eos_id]
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    produced: list[int] = []
    t0 = time.perf_counter()
    t_first = None
    for tok in generate(
        model, ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
        use_cache=args.use_cache, stop_id=tokenizer.eos_id if args.stop else None, seed=args.seed,
    ):
        if t_first is None:
            t_first = time.perf_counter()
        produced.append(tok)
        out.write(decoder.decode(tokenizer.piece_bytes(tok)))
        out.flush()
    out.write(decoder.decode(b"", final=True) + "\n")
    out.flush()
    t1 = time.perf_counter()
    n = len(produced)
    rate = (n - 1) / (t1 - t_first) if n > 1 and t1 > t_first else float("nan")
    cache = model.cache_elems_per_token()
    state = sum(b.attn.cache_state_elems() for b in model.blocks)
    err.write(
        f"[generate] prompt {len(ids)} tokens, generated {n} tokens; first token after "
        f"{((t_first or t1) - t0) * 1e3:.1f} ms, then {rate:.1f} tokens/s "
        f"(use_cache={args.use_cache}, attention={run.attention.name}); cache {cache} elems/token"
        f" over {len(model.blocks)} layers" + (f" + {state} state elems" if state else "") + "\n"
    )
    return produced


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
