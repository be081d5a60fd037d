"""Cost of the attention zoo (issue 4): training-step time and peak memory against sequence length,
decode speed against context, and the bytes each variant caches and reads per generated token.

    python scripts/bench/attention.py                 # CPU, ~3-5 min on 2 busy cores
    python scripts/bench/attention.py --device cuda --d-model 1024 --n-head 16 --max-len 32768

Setup: one attention layer alone (no MLP, no embeddings), batch 1, float32, d_model 128 with 4 heads of
32 on CPU (one torch thread), so attention is most of the work. Variants at *equal per-head dims*:
mha; gqa with 2 groups; mqa; mla with d_n = d_v = 32, d_c = 4·32, d_r = 16 (SPEC §9's ratios); vq with
the lab defaults S = 256 codes, block 32 (pos=none: vq refuses rotary keys; the others use rope).

How things are measured:
- time: wall clock of forward + backward of sum(output), the best of a few repetitions (one at the
  longest lengths), after one warm-up at T = 256.
- peak memory: CPU: the rise of the process's resident set above its level before the step, sampled
  every 0.5 ms from /proc/self/statm in a fresh process per variant, with glibc's mmap threshold pinned
  (MALLOC_MMAP_THRESHOLD_) so freed tensors go back to the OS; it includes the inputs' gradient and all
  activations kept for backward. CUDA: torch.cuda.max_memory_allocated minus the allocation before.
- decode: prefill a context of C tokens through the cache, then the mean time of 32 single-token steps.
- cache bytes: measured from the cache tensors after decoding (KVCache.n_elements_per_token; VQ's
  constant state from VQCache.n_state_elements), 4 bytes per number (float32; codes counted as numbers).
Nothing here asserts a time; the figures are printed with ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

import torch

from lmlab.config import ModelConfig, load_variants
from lmlab.registry import ATTENTION, POS


def variants(D: int) -> dict:
    return {
        "mha": ("mha", {}, "rope"),
        "gqa": ("gqa", {"n_kv_head": 2}, "rope"),
        "mqa": ("mqa", {}, "rope"),
        "mla": ("mla", {"kv_lora_rank": 4 * D, "rope_head_dim": D // 2, "nope_head_dim": D, "v_head_dim": D}, "rope"),
        "vq": ("vq", {"codebook_size": 256, "block_len": 32}, "none"),
    }


def build(key: str, args, device):
    load_variants()
    mc = ModelConfig(d_model=args.d_model, n_head=args.n_head, n_layer=1, seq_len=args.max_len)
    name, kw, pos = variants(mc.head_dim)[key]
    p = POS.get(pos)(POS.get(pos).Config(name=pos), mc)
    torch.manual_seed(0)
    return ATTENTION.get(name)(ATTENTION.get(name).Config(name=name, **kw), mc, p).to(device), p


def lengths(args) -> list[int]:
    out, t = [], 256
    while t <= args.max_len:
        out.append(t)
        t *= 2
    return out


# ------------------------------------------------------------------------------ memory probes


PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRSS(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.stop = rss(), False

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss())
            time.sleep(0.0005)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(layer, x, P, device) -> float:
    x.grad = None
    layer.zero_grad(set_to_none=True)
    sync(device)
    t0 = time.perf_counter()
    layer(x, P).sum().backward()
    sync(device)
    return time.perf_counter() - t0


def worker(key: str, args) -> None:
    """Forward+backward time and peak memory of one variant at every length (one JSON line each)."""
    device = torch.device(args.device)
    layer, p = build(key, args, device)
    layer.train()
    for T in [256] + lengths(args):  # the first is the warm-up
        x = torch.randn(1, T, args.d_model, device=device, requires_grad=True)
        P = p.default_positions(1, T, device=device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            times = [step(layer, x, P, device)]
            peak = torch.cuda.max_memory_allocated() - base
        else:
            probe = PeakRSS()
            base = probe.peak
            probe.start()
            times = [step(layer, x, P, device)]
            probe.stop = True
            probe.join()
            peak = probe.peak - base
        reps = 3 if T <= 1024 else 2 if T <= 4096 else 1
        times += [step(layer, x, P, device) for _ in range(reps - 1)]
        print(json.dumps({"variant": key, "T": T, "time": min(times), "peak": peak}), flush=True)
        del x, P


def train_sweep(args) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(args.threads))
    res: dict = {}
    for key in variants(args.d_model // args.n_head):
        cmd = [sys.executable, __file__, "--worker", key] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("worker", "skip_train", "json")
        ]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        res[key] = {r["T"]: r for r in rows[1:]}  # drop the warm-up row
        print(f"  {key}: done", file=sys.stderr, flush=True)
    return res


# ------------------------------------------------------------------------------ decoding


@torch.no_grad()
def decode(args) -> dict:
    device = torch.device(args.device)
    out: dict = {}
    ctxs = [c for c in (256, 1024, 4096, 16384) if c <= args.max_len]
    for key in variants(args.d_model // args.n_head):
        layer, p = build(key, args, device)
        layer.eval()
        out[key] = {}
        for C in ctxs:
            cache = layer.new_cache()
            layer(torch.randn(1, C, args.d_model, device=device), p.default_positions(1, C, device=device), cache)
            xs = torch.randn(32, 1, 1, args.d_model, device=device)
            sync(device)
            t0 = time.perf_counter()
            for i in range(32):
                layer(xs[i], p.default_positions(1, 1, offset=C + i, device=device), cache)
            sync(device)
            dt = (time.perf_counter() - t0) / 32
            held = cache.n_elements_per_token() * cache.length
            state = cache.n_state_elements() if hasattr(cache, "n_state_elements") else 0
            out[key][C] = {"tok_s": 1 / dt, "cache_bytes": 4 * (held + state),
                           "per_token": 4 * cache.n_elements_per_token(), "state": 4 * state}
    return out


def deepseek_dims() -> tuple[int, int]:
    """Cache numbers per token per layer at DeepSeek-V2's sizes (meta device: nothing allocated)."""
    load_variants()
    mc = ModelConfig(d_model=5120, n_head=128, head_dim=128, n_layer=1)
    rope = POS.get("rope")(POS.get("rope").Config(), mc)
    with torch.device("meta"):
        mha = ATTENTION.get("mha")(ATTENTION.get("mha").Config(), mc, rope)
        mla = ATTENTION.get("mla")(ATTENTION.get("mla").Config(
            kv_lora_rank=512, q_lora_rank=1536, rope_head_dim=64, nope_head_dim=128, v_head_dim=128), mc, rope)
    return mha.cache_elems_per_token(), mla.cache_elems_per_token()


# ------------------------------------------------------------------------------ report


def mib(b: float) -> str:
    return f"{b / 2**20:8.1f}"


def report(args, tr: dict, dec: dict) -> None:
    keys = list(variants(args.d_model // args.n_head))
    Ts = lengths(args)
    print(f"\n## Forward+backward of one attention layer (d_model {args.d_model}, {args.n_head} heads, "
          f"batch 1, fp32, {args.device}, {args.threads} thread(s))\n")
    if tr:
        print("time, seconds")
        print("T      " + "".join(f"{k:>10}" for k in keys))
        for T in Ts:
            print(f"{T:<7}" + "".join(f"{tr[k][T]['time']:10.3f}" for k in keys))
        print("\npeak memory above the step's start, MiB")
        print("T      " + "".join(f"{k:>10}" for k in keys))
        for T in Ts:
            print(f"{T:<7}" + "".join(f"{mib(tr[k][T]['peak']):>10}" for k in keys))
        print("\nVQ vs MHA: time ratio to the previous length (linear -> 2, quadratic -> 4)")
        print(f"{'T':<7}{'mha':>8}{'vq':>8}{'vq/mha':>10}{'vq us/token':>14}")
        prev = None
        for T in Ts:
            m, v = tr["mha"][T]["time"], tr["vq"][T]["time"]
            rm = f"{m / tr['mha'][prev]['time']:8.2f}" if prev else f"{'-':>8}"
            rv = f"{v / tr['vq'][prev]['time']:8.2f}" if prev else f"{'-':>8}"
            print(f"{T:<7}{rm}{rv}{v / m:10.2f}{1e6 * v / T:14.1f}")
            prev = T
        faster = [T for T in Ts if all(tr["vq"][u]["time"] < tr["mha"][u]["time"] for u in Ts if u >= T)]
        print("VQ is faster than MHA " + (f"from T = {faster[0]} on" if faster else
                                          f"at no length up to {Ts[-1]}") + " (forward+backward, this run)")
    print("\n## Decoding: single-token steps after a context of C tokens\n")
    ctxs = list(dec["mha"])
    print("tokens/s")
    print("C      " + "".join(f"{k:>10}" for k in keys))
    for C in ctxs:
        print(f"{C:<7}" + "".join(f"{dec[k][C]['tok_s']:10.0f}" for k in keys))
    print("\ncache bytes per token per layer (fp32, measured from the cache): "
          + ", ".join(f"{k} {dec[k][ctxs[0]]['per_token']}" for k in keys)
          + f"; vq holds a constant state of {dec['vq'][ctxs[0]]['state']:,} B instead")
    print("bytes held in the cache and read per decoded token after C + 32 tokens, KiB")
    print("C      " + "".join(f"{k:>10}" for k in keys))
    for C in ctxs:
        print(f"{C:<7}" + "".join(f"{dec[k][C]['cache_bytes'] / 1024:10.1f}" for k in keys))
    m, a = dec["mha"][ctxs[-1]], dec["mla"][ctxs[-1]]
    print(f"\nMLA vs MHA at equal per-head dims (d_k = d_v = {args.d_model // args.n_head}, same heads): "
          f"{a['per_token']} vs {m['per_token']} bytes per token per layer, "
          f"{m['per_token'] / a['per_token']:.2f}x less to read per decoded token")
    e_mha, e_mla = deepseek_dims()
    print(f"At DeepSeek-V2 sizes (128 heads of 128, d_c 512, d_r 64): MHA {e_mha} vs MLA {e_mla} numbers per "
          f"token per layer ({e_mha / e_mla:.1f}x; SPEC §9: 32768 vs 576)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-train", action="store_true", help="only the decode and cache figures")
    ap.add_argument("--json", default=None, help="also write the measured figures to this JSON file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:
        worker(args.worker, args)
        return
    t0 = time.perf_counter()
    tr = {} if args.skip_train else train_sweep(args)
    dec = decode(args)
    report(args, tr, dec)
    total = time.perf_counter() - t0
    print(f"\n(total benchmark time {total:.0f} s)")
    if args.json:  # the same figures as printed, for scripts/findings/attention_cache.py
        settings = {k: v for k, v in vars(args).items() if k not in ("worker", "json")}
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "decode": dec, "train": tr, "total_s": total}, f, indent=1)


if __name__ == "__main__":
    main()
