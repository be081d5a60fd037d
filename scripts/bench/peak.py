"""Measure this CPU's matmul peak FLOP/s and cache it for MFU (lmlab.model.flops.peak_flops).

    python scripts/bench/peak.py [--threads 1,2] [--dtypes float32,bfloat16] [--size 1024] [--seconds 2]

For each thread count and dtype: square matmuls of --size, repeated for about --seconds after a
warm-up; the best of --repeats timings (a peak is what the hardware *can* do, so the best run is the
estimate, not the median). Results go to <cache>/peak_flops.json (cache: --cache-dir, $LMLAB_CACHE
or ~/.cache/lmlab) under "<dtype>/threads=<n>", which ``peak_flops("cpu", dtype, threads)`` reads.
A busy machine gives a low peak (and so a high MFU): measure on an idle one, and say if it was not.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def matmul_flops(n: int, dtype: torch.dtype, seconds: float, repeats: int) -> float:
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(3):  # warm-up: thread pool, caches, oneDNN kernel selection
        a @ b
    t0 = time.perf_counter()
    k = 0
    while time.perf_counter() - t0 < seconds / repeats / 4 or k < 2:  # calibrate iterations per timing
        a @ b
        k += 1
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(k):
            a @ b
        best = max(best, 2 * n**3 * k / (time.perf_counter() - t0))
    return best


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None) -> dict:
    from lmlab.model.flops import write_cpu_peak

    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="", help="comma-separated torch thread counts (default: current)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per setting")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--cache-dir", default="")
    args = ap.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")] if args.threads else [torch.get_num_threads()]
    out = {}
    print(f"CPU: {cpu_name()}; {os.cpu_count()} logical cores; matmul {args.size}x{args.size}")
    for n in threads:
        torch.set_num_threads(n)
        for name in args.dtypes.split(","):
            flops = matmul_flops(args.size, getattr(torch, name), args.seconds, args.repeats)
            path = write_cpu_peak(flops, name, n, args.cache_dir, cpu=cpu_name(), size=args.size,
                                  torch=torch.__version__, measured=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            out[(name, n)] = flops
            print(f"  {name:9s} {n:2d} thread(s): {flops / 1e9:8.1f} GFLOP/s")
    print(f"cached in {path}")
    return out


if __name__ == "__main__":
    main()
