"""Where a training step's time goes: torch.profiler over a few steps of the plain loop, on CPU.

    python scripts/bench/profile_step.py [--steps 8] [--rows 25] [overrides...]   (default model=micro)

Same loop as scripts/bench/throughput.py's `plain` (forward, loss, backward, clip, AdamW) on random
tokens of the configured shape; prints the ops sorted by self CPU time. A diagnostic, never asserted.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    from lmlab.config import compose
    from lmlab.model.transformer import build_model

    run = compose(["trainer.progress_bar=false", *args.overrides])
    if run.trainer.num_threads:
        torch.set_num_threads(run.trainer.num_threads)
    torch.manual_seed(0)
    model = build_model(run, args.vocab).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    B, T = run.data.batch_size, run.model.seq_len

    def step():
        tokens = torch.randint(0, args.vocab, (B, T + 1))
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    print(f"model {run.model.d_model}x{run.model.n_layer} pos={run.pos.name} attention={run.attention.name}, "
          f"batch {B}x{T}, {torch.get_num_threads()} threads, {args.steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
