"""Training tokens/s: lmlab's Lightning loop vs a plain PyTorch loop, same model, same batches.

    python scripts/bench/throughput.py [--steps 60] [--warmup 10] [overrides...]

Measured in one run, on the configured model (default micro) and corpus:
  plain      hand-written loop: forward, loss, backward, clip, AdamW, LR schedule (pre-tokenized batches)
  lmlab      LMModule in a Lightning Trainer on the same pre-tokenized batches (framework overhead)
  pipeline   lmlab with its real data path: on-the-fly tokenization in data.num_workers worker(s)
             (run once per worker setting given by --workers), and with a sampling tokenizer if
             --sample is given (tokenizer.sample=true)
Each figure is tokens/s over the steps after --warmup; the ratio is against `plain` measured with
the same number of torch threads (--threads 1,2 compares thread counts).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def plain_loop(run, tokenizer, batches, warmup):
    from lmlab.model.transformer import build_model
    from lmlab.optim import build_optimizer

    torch.manual_seed(0)
    model = build_model(run, tokenizer.vocab_size)
    built = build_optimizer(model, run)  # the same optimizer and schedule as the Lightning run
    opt, sched = built["optimizer"], built["lr_scheduler"]["scheduler"]
    model.train()
    t0 = None
    for i, tokens in enumerate(batches):
        if i == warmup:
            t0 = time.perf_counter()
        x, y = tokens[:, :-1], tokens[:, 1:]
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.optim.grad_clip)
        opt.step()
        sched.step()
    n = (len(batches) - warmup) * batches[0][:, 1:].numel()
    return n / (time.perf_counter() - t0)


class Timer:
    def __init__(self, warmup):
        import lightning as L

        class _T(L.Callback):
            def __init__(s):
                s.t0 = s.t1 = None
                s.n = 0

            def on_train_batch_start(s, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup:
                    s.t0 = time.perf_counter()

            def on_train_batch_end(s, trainer, pl_module, outputs, batch, batch_idx):
                if s.t0 is not None:
                    s.n += batch["tokens"][:, 1:].numel()
                    s.t1 = time.perf_counter()

        self.cb = _T()

    @property
    def rate(self):
        return self.cb.n / (self.cb.t1 - self.cb.t0)


def lightning_loop(run, module, loader, steps, warmup):
    import lightning as L

    timer = Timer(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[timer.cb])
    trainer.fit(module, train_dataloaders=loader)
    return timer.rate


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--workers", default="0,1", help="worker counts to measure the real pipeline with")
    ap.add_argument("--sample", action="store_true", help="also measure with tokenizer.sample=true")
    ap.add_argument("--threads", default="", help="torch thread counts to compare, e.g. 1,2 (default: the config's)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved repetitions of every loop; the median is reported (order effects on "
                         "this machine reach ±8%%, more than the framework's cost)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    from lmlab.config import compose
    from lmlab.tasks.lm import LMModule
    from lmlab.train.datamodule import TextDataModule
    from lmlab.train.run import configure_threads

    run = compose(["trainer.progress_bar=false", *args.overrides])
    threads = configure_threads(run)
    dm = TextDataModule(run, log=lambda *_: None)
    dm.setup("fit")
    dm.run.data.num_workers = 0
    it = iter(dm.train_dataloader())
    batches = [next(it)["tokens"] for _ in range(args.steps)]
    print(f"model {run.model.d_model}x{run.model.n_layer}, seq_len {run.model.seq_len}, batch "
          f"{run.data.batch_size}, vocab {dm.tokenizer.vocab_size}, {threads} torch threads, "
          f"{args.steps - args.warmup} timed steps")

    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [threads]
    settings = [(int(w), False) for w in args.workers.split(",")]
    if args.sample:
        settings += [(int(w), True) for w in args.workers.split(",")]
    rows = []
    for n_threads in thread_counts:
        torch.set_num_threads(n_threads)
        rates: dict[str, list[float]] = {}
        for _ in range(args.repeats):  # interleaved, so drifts hit every loop alike
            rates.setdefault("plain", []).append(plain_loop(run, dm.tokenizer, batches, args.warmup))
            torch.manual_seed(0)
            module = LMModule(run, dm.tokenizer, dm.bytes_len)
            same = DataLoader([{"tokens": b, "epoch": 0} for b in batches], batch_size=None)
            rates.setdefault("  lmlab (Lightning), same batches", []).append(
                lightning_loop(run, module, same, args.steps, args.warmup))
            for workers, sample in settings:
                run.data.num_workers = workers
                dm.tokenizer.cfg.sample = dm.tokenizer.sampling = sample
                torch.manual_seed(0)
                module = LMModule(run, dm.tokenizer, dm.bytes_len)
                name = f"  lmlab pipeline, {workers} worker(s){', sampling' if sample else ''}"
                rates.setdefault(name, []).append(
                    lightning_loop(run, module, dm.train_dataloader(), args.steps, args.warmup))
            dm.tokenizer.cfg.sample = dm.tokenizer.sampling = False
        plain = statistics.median(rates["plain"])
        for name, rs in rates.items():
            label = f"plain PyTorch loop, {n_threads} thread(s)" if name == "plain" else name
            rows.append((label, statistics.median(rs), plain, min(rs), max(rs)))
    print(f"{'loop (median of ' + str(args.repeats) + ')':48s} {'tokens/s':>10s} {'vs plain':>9s} {'range':>15s}")
    for name, rate, base, lo, hi in rows:
        print(f"{name:48s} {rate:10.0f} {rate / base:9.3f} {lo:7.0f}-{hi:<7.0f}")


if __name__ == "__main__":
    main()
