"""Data pipeline at scale: start-up time, resume time and peak memory against corpus size and
against the batches already consumed, for two checkouts of lmlab (e.g. before: /work/main, after:
this worktree).

    python scripts/bench/data_scale.py --before /path/to/old/checkout [--sizes 5,50,150] [--steps 0,250,1000,4000]
    python scripts/bench/data_scale.py --only after --sizes 5,50,150,500 --steps 0,250,1000,4000

The corpus is the default Shakespeare corpus repeated (each copy's paragraphs tagged with its copy
number so that no two documents are equal) into one text file of the given size in MB, read with
``data=text data.split=paragraph``. Each figure comes from a fresh Python process running the
checkout under test (``PYTHONPATH``), with ``data.num_workers=0`` so the stream runs in the measured
process:

  startup_s    ``TextDataModule.setup()`` with the tokenizer already cached (a first, unmeasured
               process trains it): read the corpus, find the tokenizer in the cache, pack validation
               (of which ``corpus_s`` is ``load_corpus`` and ``tokenizer_s`` ``build_tokenizer``)
  startup_cpu_s  the CPU seconds (user + system) of that setup: on a shared machine a steadier
               figure than the wall time, which waits for the other processes
  peak_mb      the process's peak resident memory (ru_maxrss) after setup
  anon_mb, file_mb  its resident memory after setup split as Linux counts it (``/proc/self/status``):
               ``RssAnon``, the process's own memory (Python objects, arrays), and ``RssFile``,
               file pages mapped into it (shared libraries, and the pages of the memory-mapped
               document cache that were read: clean page cache the kernel can drop, not a copy);
               ``corpus`` / ``val`` file MB: the file-mapped pages added while opening the corpus and
               while packing the validation blocks (``pack_eval``), i.e. where ``file_mb`` grows
  build_s      (checkouts with a document cache, ``<cache>/corpora/docs``) the same start-up with that
               cache removed first, the tokenizer still cached: the one-time cost of writing the
               corpus's documents into the memory-mapped dataset; ``build_peak_mb`` its peak memory
  resume_s     time to the first training batch of a stream resumed after N consumed batches
               (``--steps``): the old checkout's ``start_batch`` skip, the new one's saved stream
               position (obtained in the same process by consuming N batches first, not timed)

Prints a Markdown table (one row per corpus size and checkout, then one per N and checkout).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, resource, sys, time
from lmlab.config import compose
from lmlab.train.datamodule import TextDataModule
args = json.loads(sys.argv[1])
run = compose(args["overrides"])
import lmlab.train.datamodule as D
def rss():
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out
parts = {}
def timed(name, fn):
    def wrapper(*a, **k):
        t, f = time.perf_counter(), rss().get("RssFile", 0.0)
        try:
            return fn(*a, **k)
        finally:
            parts[name + "_s"] = time.perf_counter() - t
            parts[name + "_file_mb"] = rss().get("RssFile", 0.0) - f
    return wrapper
D.load_corpus, D.build_tokenizer = timed("corpus", D.load_corpus), timed("tokenizer", D.build_tokenizer)
if hasattr(D, "pack_eval"):
    D.pack_eval = timed("val", D.pack_eval)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
t0, c0 = time.perf_counter(), cpu()
dm = TextDataModule(run, log=lambda *_: None)
dm.setup("fit")
startup, startup_cpu = time.perf_counter() - t0, cpu() - c0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
end = rss()
out = {"startup_s": startup, "startup_cpu_s": startup_cpu, "peak_mb": peak,
       "anon_mb": end.get("RssAnon", float("nan")), "file_mb": end.get("RssFile", float("nan")), **parts}
n = args.get("resume_after")
if n is not None:
    if hasattr(dm, "load_state_dict") and "stream_state" in vars(dm):
        it = iter(dm.train_dataloader())  # consume n batches to get the saved position (untimed)
        for _ in range(n):
            dm.on_before_batch_transfer(next(it), 0)
        state = dm.state_dict()
        dm2 = TextDataModule(run, log=lambda *_: None)
        dm2.corpus, dm2.tokenizer, dm2.train_texts = dm.corpus, dm.tokenizer, dm.train_texts
        dm2.load_state_dict(state)
        t0 = time.perf_counter()
        next(iter(dm2.train_dataloader()))
    else:
        dm.start_batch = n
        t0 = time.perf_counter()
        next(iter(dm.train_dataloader()))
    out["resume_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def make_corpus(mb: int, path: Path, cache: str) -> None:
    if path.exists() and path.stat().st_size >= mb * 1_000_000:
        return
    sys.path.insert(0, str(HERE))
    from lmlab.data.sources.shakespeare import Shakespeare, ShakespeareConfig

    base = "".join(Shakespeare(ShakespeareConfig()).load(cache)["text"])
    paras = [p for p in base.split("\n\n") if p.strip()]
    with open(path, "w") as f:
        size, copy = 0, 0
        while size < mb * 1_000_000:
            for p in paras:
                s = f"[{copy}] {p}\n\n"
                f.write(s)
                size += len(s.encode())
                if size >= mb * 1_000_000:
                    break
            copy += 1


def measure(checkout: str, overrides: list[str], resume_after=None) -> dict:
    env = {**os.environ, "PYTHONPATH": checkout, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    arg = json.dumps({"overrides": overrides, "resume_after": resume_after})
    r = subprocess.run([sys.executable, "-c", CHILD, arg], env=env, capture_output=True, text=True, cwd=checkout)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{checkout}: {r.stderr[-2000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="checkout of the old code (not needed with --only after)")
    ap.add_argument("--after", default=str(HERE), help="checkout of the new code (default: this one)")
    ap.add_argument("--sizes", default="5,50,150", help="corpus sizes in MB")
    ap.add_argument("--steps", default="0,250,1000,4000", help="batches consumed before the resume ('' for none)")
    ap.add_argument("--resume-size", type=int, default=5, help="corpus size (MB) for the resume rows")
    ap.add_argument("--only", choices=["before", "after"], help="measure one checkout only")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lmlab-data-bench"))
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(x) for x in a.sizes.split(",")]
    checkouts = {"before": a.before, "after": a.after}
    if a.only:
        checkouts = {a.only: checkouts[a.only]}
    common = ["data=text", "data.split=paragraph", "data.num_workers=0", "model=micro", "tokenizer.num_threads=1"]

    def over(mb, which):
        return common + [f"data.paths=[{work / f'corpus-{mb}mb.txt'}]", f"cache_dir={work / ('cache-' + which)}"]

    if "before" in checkouts and not a.before:
        ap.error("--before is needed unless --only after")
    print("| corpus | code | first start: documents cached (s; CPU s) | its peak memory (MB) | start-up (s; CPU s) "
          "| of which corpus / tokenizer (s) | peak memory (MB) | of it: own / file-mapped (MB) "
          "| file-mapped added by corpus / val (MB) | document cache on disk (MB) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    for mb in sorted(set(sizes + ([a.resume_size] if a.steps else []))):
        make_corpus(mb, work / f"corpus-{mb}mb.txt", str(work / "cache-after"))
    for mb in sizes:
        for which, co in checkouts.items():
            measure(co, over(mb, which))  # trains and caches the tokenizer (not measured)
            docs = work / f"cache-{which}" / "corpora" / "docs"
            build = "- | -"
            if docs.exists():  # a checkout with the document cache: its one-time build, measured
                shutil.rmtree(docs)
                b = measure(co, over(mb, which))
                build = f"{b['startup_s']:.1f}; {b['startup_cpu_s']:.1f} | {b['peak_mb']:.0f}"
            r = measure(co, over(mb, which))
            disk = sum(f.stat().st_size for f in docs.rglob("*") if f.is_file()) / 1e6 if docs.exists() else 0
            print(f"| {mb} MB | {which} | {build} | {r['startup_s']:.2f}; {r['startup_cpu_s']:.2f} "
                  f"| {r.get('corpus_s', 0):.2f} / "
                  f"{r.get('tokenizer_s', 0):.2f} | {r['peak_mb']:.0f} "
                  f"| {r.get('anon_mb', float('nan')):.0f} / {r.get('file_mb', float('nan')):.0f} "
                  f"| {r.get('corpus_file_mb', float('nan')):.0f} / {r.get('val_file_mb', float('nan')):.0f} "
                  f"| {disk:.0f} |", flush=True)
    if not a.steps:
        return
    print("\n| batches consumed (16 x 129 tokens) | code | resume: first batch after (s) |\n|---|---|---|")
    for n in (int(x) for x in a.steps.split(",")):
        for which, co in checkouts.items():
            r = measure(co, over(a.resume_size, which), resume_after=n)
            print(f"| {n} | {which} | {r['resume_s']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
