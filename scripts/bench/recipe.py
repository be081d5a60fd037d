"""Training speed of recipe variants (issue 14): tokens/s of each against the default, measured
in one run with interleaved repeats (medians), so ablations at equal steps convert to equal wall time.

    python scripts/bench/recipe.py [--steps 40] [--warmup 8] [--repeats 5] [--threads N] \\
        [--variant NAME=override,override ...]      # default: the issue-14 options one at a time

Each variant is the default config plus its overrides (comma-separated; a value with commas is not
supported here). Timed: the hand-written training step of ``scripts/bench/throughput.py`` (forward,
loss, backward, clip, the configured optimizer and schedule from ``lmlab.optim.build_optimizer``) on
pre-tokenized batches of the variant's own tokenizer, after --warmup steps; no data loading, no
validation (a different vocabulary also changes the text read per token: multiply by the runs'
``train_bytes_per_token`` for bytes/s). Ratios are against the first variant, measured in the same repeats.
Nothing is asserted; the machine's load moves the figures (say when it was shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

DEFAULT_VARIANTS = [
    "default=",
    "muon=optim=muon",
    "qk_norm=model.qk_norm=true",
    "relu2=model.mlp=relu2",
    "softcap=model.logit_softcap=30",
    "wsd=optim.schedule=wsd",
]


def prepare(overrides: list[str], steps: int):
    """The composed run, its tokenizer and ``steps`` training batches, and their bytes per token."""
    from lmlab.config import compose
    from lmlab.train.datamodule import TextDataModule

    run = compose(["trainer.progress_bar=false", "data.num_workers=0", *overrides])
    dm = TextDataModule(run, log=lambda *_: None)
    dm.setup("fit")
    it = iter(dm.train_dataloader())
    batches = [next(it)["tokens"] for _ in range(steps)]
    return run, dm, batches


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: the config's)")
    ap.add_argument("--variant", action="append", default=[], help="NAME=override,override ...")
    args = ap.parse_args(argv)

    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    from throughput import plain_loop

    from lmlab.train.run import configure_threads

    variants = []
    for spec in args.variant or DEFAULT_VARIANTS:
        name, _, rest = spec.partition("=")
        overrides = [o for o in rest.split(",") if o]
        variants.append((name, *prepare(overrides, args.steps)))
    threads = args.threads or configure_threads(variants[0][1])
    torch.set_num_threads(threads)
    print(f"{threads} torch thread(s), {args.steps - args.warmup} timed steps, {args.repeats} interleaved repeats")
    rates: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, run, dm, batches in variants:
            rates.setdefault(name, []).append(plain_loop(run, dm.tokenizer, batches, args.warmup))
    base = statistics.median(rates[variants[0][0]])
    print(f"{'variant':12s} {'tokens/s':>9s} {'vs ' + variants[0][0]:>12s} {'range':>15s}")
    for name, *_ in variants:
        r = statistics.median(rates[name])
        print(f"{name:12s} {r:9.0f} {r / base:12.3f} {min(rates[name]):7.0f}-{max(rates[name]):<7.0f}")
    return {name: statistics.median(rs) for name, rs in rates.items()}


if __name__ == "__main__":
    main()
