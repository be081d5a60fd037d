"""One command for the first lent GPU: training tokens/s, MFU and peak memory per model, attention
variant, context length and compile setting, then a 2-minute default-recipe run's val bits/byte.

    python scripts/bench/gpu.py                       # H100/H200-class GPU, under 8 minutes
    python scripts/bench/gpu.py --smoke               # CPU, tiny sizes, seconds (what the tests run)
    python scripts/bench/gpu.py --cache-dir .lmlab-cache --out outputs/gpu_bench.json

Part 1 (throughput), for model=gpt2 and model=small, every attention variant in conf/attention/, and
T = 1024 and 4096: the training step lmlab runs (forward, cross-entropy, backward, gradient clip,
AdamW) in bf16 autocast (``trainer=gpu``'s ``precision: bf16-mixed``) on random tokens, 16,384 tokens
per step (batch = 16384 // T), eager and under ``torch.compile``. Reported: tokens/s over the timed
steps (after warm-up, synchronised), MFU = lmlab.model.flops.flops_per_token × tokens/s ÷ the device's
dense bf16 peak (lmlab.model.flops table; "n/a" for a device not in it), and peak allocated memory.
Compiled settings are run last, most important first (gpt2, mha), and those that would overrun
``--budget`` seconds are listed as skipped rather than run: compile time varies by variant.
A failure (e.g. out of memory) is reported in its row and the script goes on.

Part 2 (quality): ``python train.py trainer=gpu`` with the default recipe (model=micro, shakespeare),
limited to ``--train-seconds`` through ``trainer.max_time`` when the config has that key, else to
``--train-steps`` steps; it prints the val bits/byte from summary.json. The corpus must already be in
the cache on a machine without network: pass ``--cache-dir`` pointing at a copy of ~/.cache/lmlab
(or set $LMLAB_CACHE).

Part 3 (FSDP, CUDA only; skipped on CPU): a 20-step ``trainer=fsdp`` run of model=small on every visible
GPU, then its ``last.ckpt`` loaded by ``lmlab.train.checkpoint.load_checkpoint`` (the one loader every
command uses) and one forward pass of the loaded model: FSDP's consolidated checkpoints must load
unsharded.

Results: a markdown table on stdout and every row as json in ``--out``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

TOKENS_PER_STEP = 16384


def variants() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "attention").glob("*.yaml"))


def build(model_name: str, attention: str, T: int, overrides: list[str], device):
    from lmlab.config import compose
    from lmlab.model.transformer import build_model

    pos = ["pos=none"] if attention == "vq" else []  # vq refuses rotary keys and brings its own bias
    run = compose([f"model={model_name}", f"attention={attention}", f"model.seq_len={T}", *pos, *overrides])
    with torch.device(device):  # initialise on the GPU: CPU init of gpt2 costs seconds per row
        return run, build_model(run, run.tokenizer.vocab_size)


def measure(model, vocab: int, T: int, batch: int, device, compile_: bool, warmup: int, steps: int) -> dict:
    from lmlab.model.flops import flops_per_token, mfu, peak_flops

    model = model.to(device).train()
    fpt = flops_per_token(model, context=T)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    if compile_:
        torch._dynamo.reset()  # a fresh cache per row: no recompile limits carried over from the last model
    fwd = torch.compile(model) if compile_ else model
    amp = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        tokens = torch.randint(0, vocab, (batch, T + 1), device=device)
        with amp:
            logits = fwd(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    for _ in range(warmup):  # includes compilation
        step()
    if cuda:
        torch.cuda.synchronize(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    rate = steps * batch * T / (time.perf_counter() - t1)
    peak = peak_flops(device, "bfloat16")
    return {
        "tokens_per_s": rate, "mfu": mfu(fpt, rate, peak), "flops_per_token": fpt, "warmup_s": t1 - t0,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None,
    }


def fmt(row: dict) -> str:
    if "error" in row or "skipped" in row:
        note = row.get("error") or row.get("skipped")
        return f"| {row['model']} | {row['attention']} | {row['T']} | {row['compile']} | {note} | | | |"
    mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
    mem = f"{row['peak_mem_gib']:.1f}" if row["peak_mem_gib"] is not None else "n/a"
    return (f"| {row['model']} | {row['attention']} | {row['T']} | {row['compile']} | "
            f"{row['tokens_per_s']:,.0f} | {mfu} | {mem} | {row['warmup_s']:.1f} |")


def throughput(args, device, log) -> list[dict]:
    if args.smoke:
        models, lengths, steps, warmup = ["nano"], [64, 128], 2, 1
        overrides = ["model.d_model=32", "model.n_layer=2", "tokenizer.vocab_size=400"]
    else:
        models, lengths, steps, warmup = ["gpt2", "small"], [1024, 4096], args.steps, args.warmup
        overrides = []
    attns = args.attention.split(",") if args.attention else variants()
    settings = [(m, a, T, False) for m in models for a in attns for T in lengths]
    if args.compile:  # most important first: they are the ones cut when the budget runs out
        settings += [(m, a, T, True) for m in models for a in sorted(attns, key=lambda a: a != "mha")
                     for T in lengths]
    rows, t_start, compile_cost = [], time.perf_counter(), None
    log("| model | attention | T | compile | tokens/s | MFU | peak GiB | warm-up s |")
    log("|---|---|---:|---|---:|---:|---:|---:|")
    for model_name, attn, T, comp in settings:
        row = {"model": model_name, "attention": attn, "T": T, "compile": comp, "device": str(device)}
        elapsed = time.perf_counter() - t_start
        if comp and compile_cost is not None and elapsed + compile_cost > args.budget:
            row["skipped"] = f"skipped: --budget {args.budget:.0f}s reached"
        else:
            try:
                run, model = build(model_name, attn, T, overrides, device)
                batch = max(1, TOKENS_PER_STEP // T) if not args.smoke else 2
                t0 = time.perf_counter()
                row.update(measure(model, run.tokenizer.vocab_size, T, batch, device, comp, warmup, steps))
                row["batch"] = batch
                if comp:
                    compile_cost = max(compile_cost or 0.0, time.perf_counter() - t0)
            except Exception as e:  # noqa: BLE001 - a failing row (OOM, compile error) must not end the sweep
                row["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:160]}"
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        rows.append(row)
        log(fmt(row))
    return rows


def quality_run(args, log) -> dict:
    from lmlab.config import compose

    out = Path(args.out).parent / "gpu_bench_run"
    if args.smoke:
        over = ["model=nano", "model.d_model=32", "model.n_layer=2", "model.seq_len=32", "data=pystdlib",
                "data.max_files=25", "data.batch_size=4", "data.num_workers=0", "tokenizer.vocab_size=400",
                "trainer.max_steps=3", "trainer.val_every=3", "trainer.limit_val_batches=2",
                "trainer.entropy_baseline=false"]
    else:
        over = ["trainer=gpu", "trainer.val_every=250"]
        has_max_time = "max_time" in compose([]).trainer.__dataclass_fields__
        if has_max_time:
            secs = int(args.train_seconds)
            over += [f"trainer.max_time=00:00:{secs // 60:02d}:{secs % 60:02d}", "trainer.max_steps=100000"]
        else:
            over += [f"trainer.max_steps={args.train_steps}"]
    over += [f"out_dir={out}", "run_name=recipe", "resume=false", "trainer.progress_bar=false"]
    if args.cache_dir:
        over.append(f"cache_dir={args.cache_dir}")
    cmd = [sys.executable, "train.py", *over]
    log(f"\n$ {' '.join(cmd)}")
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                       timeout=args.train_seconds + 300 if not args.smoke else 600)
    row = {"cmd": " ".join(cmd), "wall_s": time.perf_counter() - t0, "returncode": r.returncode}
    summary = out / "recipe" / "summary.json"
    if r.returncode == 0 and summary.exists():
        s = json.loads(summary.read_text())
        row.update({k: s.get(k) for k in ("val_bpb", "step", "entropy_bpb", "stopped_by") if k in s})
        log(f"default recipe on {args.device}: val_bpb {row.get('val_bpb')} after {row.get('step')} steps "
            f"({row['wall_s']:.0f} s wall)")
    else:
        row["error"] = (r.stderr or r.stdout)[-1500:]
        log(f"default recipe run failed (rc {r.returncode}):\n{row['error']}")
    return row


def fsdp_check(args, log) -> dict:
    """Part 3: train with trainer=fsdp for 20 steps, then load the checkpoint with the one loader."""
    if not torch.cuda.is_available():
        log("FSDP check skipped: Lightning's FSDP is CUDA-only")
        return {"skipped": "no CUDA"}
    out = Path(args.out).parent / "gpu_bench_fsdp"
    over = ["trainer=fsdp", f"trainer.devices={torch.cuda.device_count()}", "model=small", "trainer.max_steps=20",
            "trainer.val_every=10", f"out_dir={out}", "run_name=fsdp", "resume=false", "trainer.progress_bar=false"]
    if args.cache_dir:
        over.append(f"cache_dir={args.cache_dir}")
    cmd = [sys.executable, "train.py", *over]
    log(f"\n$ {' '.join(cmd)}")
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    row = {"cmd": " ".join(cmd), "returncode": r.returncode}
    if r.returncode != 0:
        row["error"] = (r.stderr or r.stdout)[-1500:]
        log(f"FSDP run failed (rc {r.returncode}):\n{row['error']}")
        return row
    from lmlab.train.checkpoint import load_checkpoint

    try:
        c = load_checkpoint(out / "fsdp" / "checkpoints" / "last.ckpt")
        ids = torch.tensor([c.tokenizer.encode("To be, or not to be")])
        with torch.no_grad():
            row["loaded_logits_finite"] = bool(torch.isfinite(c.model(ids)).all())
        row["step"] = c.step
        log(f"FSDP: trained {c.step} steps; checkpoint loads unsharded (finite logits: {row['loaded_logits_finite']})")
    except Exception as e:  # noqa: BLE001 - reported in the row; the benchmark goes on
        row["error"] = f"{type(e).__name__}: {e}"
        log(f"FSDP checkpoint did not load: {row['error']}")
    return row


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny sizes, seconds: checks the script runs")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--attention", default="", help="comma-separated variants (default: all in conf/attention; vq runs with pos=none)")
    ap.add_argument("--no-compile", dest="compile", action="store_false")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per setting")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=300, help="seconds for part 1; compiled rows past it are skipped")
    ap.add_argument("--train-seconds", type=float, default=120)
    ap.add_argument("--train-steps", type=int, default=3000, help="step limit when trainer.max_time is absent")
    ap.add_argument("--no-train", dest="train", action="store_false")
    ap.add_argument("--cache-dir", default="")
    ap.add_argument("--out", default=str(ROOT / "outputs" / "gpu_bench.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        args.compile = False  # inductor on CPU takes minutes; the compiled path is GPU-only here
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        name = torch.cuda.get_device_name(device)
    else:
        name = "cpu"
    log = print
    log(f"device {name}; torch {torch.__version__}; {TOKENS_PER_STEP} tokens/step; bf16 autocast")
    result = {"device": name, "torch": torch.__version__, "rows": throughput(args, device, log)}
    if args.train:
        result["recipe"] = quality_run(args, log)
        result["fsdp"] = fsdp_check(args, log)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    log(f"written {args.out}")
    return result


if __name__ == "__main__":
    main()
