"""Tokenizer throughput and token inflation, lmlab's unigram segmenter vs SentencePiece.

    python scripts/bench/tokenizer.py                      # conf defaults: data=shakespeare, vocab 2048
    python scripts/bench/tokenizer.py data=pystdlib --mb 2 --alpha 0.1

One process, one thread, one model (the configured SentencePiece unigram model, trained or loaded
from the cache exactly as training does), one text (the held-out split, whole documents as the data
pipeline encodes them). Prints, all measured in this run:

1. MB/s of lmlab ``viterbi``, ``sample``, ``sample_v1`` and SentencePiece deterministic and sampling
   (``nbest_size=-1``), best of ``--repeat`` passes, with the ratios the issue sets as goals.
2. bytes/token under Viterbi and under sampling at several alphas (token inflation), lmlab and
   SentencePiece side by side (the same distribution, so the same inflation up to noise).
3. The data pipeline (``PackedTrainStream``, one worker, ``mode=sample``) in tokens/s against the
   training speed of the configured model (forward + backward + AdamW step), same thread count.
No figure here is asserted; they are measurements to read.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def best_time(fn, docs, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for d in docs:
            fn(d)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("overrides", nargs="*", help="Hydra overrides (default: the conf defaults)")
    ap.add_argument("--mb", type=float, default=2.0, help="MB of held-out text to segment")
    ap.add_argument("--alpha", type=float, default=0.1, help="alpha of the speed comparison")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-steps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import sentencepiece as spm

    from lmlab.config import compose
    from lmlab.data.corpus import build_tokenizer, load_corpus

    overrides = ["tokenizer=unigram", *args.overrides]
    run = compose(overrides)
    corpus = load_corpus(run)
    t = time.perf_counter()
    tok = build_tokenizer(run, corpus)
    print(f"tokenizer: {tok.describe()} (ready in {time.perf_counter() - t:.1f}s)")
    docs, size = [], 0
    for text in list(corpus.val["text"]) + list(corpus.train["text"]):  # held-out first
        docs.append(text)
        size += len(text.encode())
        if size >= args.mb * 1e6:
            break
    n_bytes = sum(len(d.encode()) for d in docs)
    print(f"text: {len(docs)} documents, {n_bytes / 1e6:.2f} MB ({' '.join(overrides)}); "
          f"threads={torch.get_num_threads()}, alpha={args.alpha}\n")

    sp = tok.sp
    a = args.alpha
    rng = np.random.default_rng(0)
    sample, v1 = tok.with_mode("sample", a), tok.with_mode("sample_v1", a)
    spm.set_random_generator_seed(1)
    runs = {
        "lmlab viterbi": lambda d: tok.encode(d),
        "lmlab sample": lambda d: sample.encode(d, rng),
        "lmlab sample_v1": lambda d: v1.encode(d, rng),
        "SentencePiece deterministic": lambda d: sp.encode(d),
        "SentencePiece sampling": lambda d: sp.encode(d, enable_sampling=True, alpha=a, nbest_size=-1),
    }
    mbs = {}
    print(f"1. throughput (best of {args.repeat} passes)")
    for name, fn in runs.items():
        mbs[name] = n_bytes / best_time(fn, docs, args.repeat) / 1e6
        print(f"   {name:30s} {mbs[name]:7.2f} MB/s")
    print(f"   lmlab sample  / SentencePiece sampling      = {mbs['lmlab sample'] / mbs['SentencePiece sampling']:.2f}x"
          "  (goal >= 1)")
    print(f"   lmlab viterbi / SentencePiece deterministic = "
          f"{mbs['lmlab viterbi'] / mbs['SentencePiece deterministic']:.2f}x  (goal >= 0.5)")
    print(f"   lmlab sample  / lmlab viterbi               = {mbs['lmlab sample'] / mbs['lmlab viterbi']:.2f}x"
          f"   SentencePiece sampling / deterministic = "
          f"{mbs['SentencePiece sampling'] / mbs['SentencePiece deterministic']:.2f}x")

    print("\n2. bytes/token (token inflation = viterbi bytes/token / sampled bytes/token)")
    n_vit = sum(len(tok.encode(d)) for d in docs)
    print(f"   viterbi {n_bytes / n_vit:.3f} bytes/token")
    for alpha in (0.05, 0.1, 0.2, 0.3, 0.5, 1.0):
        row = []
        for name, enc in (("sample", tok.with_mode("sample", alpha)), ("sample_v1", tok.with_mode("sample_v1", alpha))):
            n = sum(len(enc.encode(d, rng)) for d in docs)
            row.append(f"{name} {n_bytes / n:.3f} (x{n / n_vit:.3f})")
        n = sum(len(sp.encode(d, enable_sampling=True, alpha=alpha, nbest_size=-1)) for d in docs)
        row.append(f"SentencePiece {n_bytes / n:.3f} (x{n / n_vit:.3f})")
        print(f"   alpha={alpha:<4}  " + "   ".join(row))

    print("\n3. does sampling keep up with training?")
    from lmlab.data.pipeline import PackedTrainStream
    from lmlab.model.transformer import build_model

    B, T = run.data.batch_size, run.model.seq_len
    stream = PackedTrainStream(corpus.train["text"], sample, T, B, seed=0)
    it = iter(stream)
    next(it)
    n_batches, t = 0, time.perf_counter()
    while time.perf_counter() - t < 3.0:
        next(it)
        n_batches += 1
    feed = n_batches * B * (T + 1) / (time.perf_counter() - t)
    model = build_model(run, tok.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, tok.vocab_size, (B, T + 1))

    def step():
        logits = model(x[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    train_tps = args.train_steps * B * T / (time.perf_counter() - t)
    m = run.model
    print(f"   model d_model={m.d_model} n_layer={m.n_layer} n_head={m.n_head} seq_len={T} batch={B} "
          f"vocab={tok.vocab_size} ({model.n_params() / 1e6:.2f}M params)")
    print(f"   data pipeline, 1 worker, mode=sample alpha={a}: {feed:10.0f} tokens/s")
    print(f"   training step (fwd+bwd+AdamW):                 {train_tps:10.0f} tokens/s")
    print(f"   pipeline / training = {feed / train_tps:.1f}x  (> 1: one worker feeds the model)")


if __name__ == "__main__":
    main()
