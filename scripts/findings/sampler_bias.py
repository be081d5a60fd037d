"""Viterbi Sampling v1 (SPEC §2) vs perfect sampling (SPEC §3) on the real vocabulary (issue 15, item 3).

For a few hundred short real strings from the validation text of the default corpus, every
segmentation under the default tokenizer's unigram model (``tokenizer=unigram``: the cached
SentencePiece unigram model of ``python train.py``, lmlab's lattice) is enumerated, and for each
inverse temperature alpha the script measures the total-variation distance

    TV(q, P_alpha) = 1/2 * sum_seg |q(seg) - P_alpha(seg)|,   P_alpha(seg) ∝ exp(alpha * score(seg))

between the target P_alpha and

- ``v1_exact``: the exact output distribution of the v1 sampler, computed by following every branch
  of its random decisions (no sampling noise; see ``v1_distribution``);
- ``v1_empirical`` / ``perfect_empirical``: the empirical distribution of N draws of lmlab's compiled
  samplers (``lattice_fast.segment`` modes ``sample_v1`` / ``sample``), one 64-bit seed per draw.
  ``perfect_empirical`` is the noise floor: the TV an exact sampler shows at this N.
- ``v1_empirical_vs_exact``: TV between v1's draws and v1's exact distribution; it must sit at the
  noise floor, which checks ``v1_distribution`` against the real sampler.

Strings: whole words (with their leading space, as the text has them) and pairs of words of 4-12 UTF-8
bytes, drawn from the validation documents with ``--seed``; unique. Strings with more than
``--max-segs`` segmentations would be skipped (counted in the JSON), so none is silently dropped.

Writes ``docs/findings/sampler_bias.json`` (settings, per-alpha summaries, per-string values, wall
time) and ``docs/findings/sampler_bias.png``, and prints the table. Run from the repository root:

    PYTHONPATH=$PWD python scripts/findings/sampler_bias.py            # ~4 min on one core

``--strings 20 --samples 200`` is a quick smoke run.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
ALPHAS = (0.1, 0.2, 0.3, 0.5, 1.0)
BINS = ((1, 1), (2, 3), (4, 9), (10, 31), (32, 10**9))
WORD = re.compile(r" ?\S+")


def pick_strings(texts: list[str], n: int, seed: int, lo: int = 4, hi: int = 12) -> list[str]:
    """``n`` unique words / word pairs of lo..hi UTF-8 bytes, drawn uniformly over positions in ``texts``."""
    rng = np.random.default_rng(seed)
    lines = [ln for t in texts for ln in t.split("\n") if ln.strip()]
    out: dict[str, None] = {}
    tries = 0
    while len(out) < n and tries < 200 * n:
        tries += 1
        words = WORD.findall(lines[int(rng.integers(len(lines)))])
        if not words:
            continue
        i = int(rng.integers(len(words)))
        k = 1 + int(rng.integers(2))  # one word or two
        s = "".join(words[i : i + k])
        if lo <= len(s.encode("utf-8")) <= hi:
            out.setdefault(s, None)
    return list(out)


def count_segmentations(model, text: bytes) -> int:
    from lmlab.tokenizers.lattice import edges

    n = np.zeros(len(text) + 1, dtype=object)
    n[0] = 1
    for a, b, _, _ in edges(model, text):  # by increasing start: n[a] is final when read
        n[b] += n[a]
    return int(n[len(text)])


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def v1_distribution(model, text: bytes, alpha: float, max_states: int = 200_000) -> dict[tuple, float]:
    """The exact output distribution of ``sample_v1`` (``lattice.segment_ref`` mode 2) on ``text``.

    v1's choice at end b depends on the *held* scores of the candidates' start positions, which are
    themselves random, so the choices at different b are dependent. The state after deciding b is the
    held route (ids, score) of every position that is still read later (an edge from it ends after
    b) plus b itself; states with equal routes are merged. At each b, with the state fixed, the
    candidates duel in edge order (increasing start): the first is taken, the i-th replaces the
    current holder h with probability sigmoid(alpha * (new_i - new_h)); a small DP over "who holds
    b now" gives the winner's distribution. Exponential in the worst case (``max_states`` guards).
    """
    from lmlab.tokenizers.lattice import edges

    n = len(text)
    into: dict[int, list[tuple[int, float, tuple]]] = defaultdict(list)
    last_use = {0: 0}
    for a, b, sc, pid in edges(model, text):
        emitted = (pid,) if pid >= 0 else tuple(int(model.byte_ids[c]) for c in text[a:b])
        into[b].append((a, float(sc), emitted))  # arrives in processing order (increasing a)
        last_use[a] = max(last_use.get(a, 0), b)
    states: dict[tuple, float] = {((0, (), 0.0),): 1.0}  # tuple of (pos, ids, held score)
    for b in range(1, n + 1):
        cands = into.get(b)
        if not cands:
            continue
        nxt: dict[tuple, float] = defaultdict(float)
        for st, q in states.items():
            held = {pos: (ids, s) for pos, ids, s in st}
            new = [held[a][1] + sc for a, sc, _ in cands]  # float64 sums, as segment_ref
            who = {0: 1.0}
            for i in range(1, len(cands)):
                w2: dict[int, float] = defaultdict(float)
                for h, ph in who.items():
                    p = _sigmoid(alpha * (new[i] - new[h]))
                    w2[i] += ph * p
                    w2[h] += ph * (1.0 - p)
                who = w2
            keep = tuple(x for x in st if last_use.get(x[0], -1) > b)
            for i, pw in who.items():
                if pw == 0.0:
                    continue
                a, _, emitted = cands[i]
                route = (b, held[a][0] + emitted, new[i])
                nxt[keep + (route,) if b < n else (route,)] += q * pw
        states = nxt
        if len(states) > max_states:
            raise RuntimeError(f"{text!r}: more than {max_states} v1 states")
    out: dict[tuple, float] = defaultdict(float)
    for st, q in states.items():
        (_, ids, _), = st
        out[ids] += q
    return dict(out)


def tv(p: dict, q: dict) -> float:
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys)


def empirical(model, text: bytes, mode: str, alpha: float, seeds: np.ndarray) -> dict[tuple, float]:
    from lmlab.tokenizers.lattice_fast import segment

    c = Counter(tuple(segment(model, text, mode, alpha, int(s)).tolist()) for s in seeds)
    return {k: v / len(seeds) for k, v in c.items()}


def summarize(v: list[float]) -> dict:
    a = np.asarray(v, dtype=float)
    return {"mean": float(a.mean()), "median": float(np.median(a)), "p90": float(np.quantile(a, 0.9)),
            "max": float(a.max())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strings", type=int, default=300)
    ap.add_argument("--samples", type=int, default=2000, help="draws per string, alpha and sampler")
    ap.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-segs", type=int, default=50_000)
    ap.add_argument("--out", default=str(ROOT / "docs" / "findings" / "sampler_bias"))
    ap.add_argument("overrides", nargs="*", help="config overrides (default: tokenizer=unigram)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()

    from lmlab.config import compose
    from lmlab.data.corpus import build_tokenizer, load_corpus
    from lmlab.tokenizers.lattice import exact_distribution

    run = compose(["tokenizer=unigram", *args.overrides])
    corpus = load_corpus(run)
    tok = build_tokenizer(run, corpus)
    model = tok.model
    t_setup = time.perf_counter() - t_start

    strings = pick_strings(list(corpus.val["text"]), args.strings, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    rows, skipped = [], []
    summary: dict = {a: defaultdict(list) for a in args.alphas}
    for s in strings:
        text = tok.normalize(s)
        n_segs = count_segmentations(model, text)
        if n_segs > args.max_segs:
            skipped.append({"string": s, "segmentations": n_segs})
            continue
        row = {"string": s, "bytes": len(s.encode("utf-8")), "segmentations": n_segs,
               "viterbi": tok.segment(s, "viterbi"), "by_alpha": {}}
        for alpha in args.alphas:
            target = exact_distribution(model, text, alpha)
            v1 = v1_distribution(model, text, alpha)
            seeds = rng.integers(0, 2**63, size=(2, args.samples))
            emp_perfect = empirical(model, text, "sample", alpha, seeds[0])
            emp_v1 = empirical(model, text, "sample_v1", alpha, seeds[1])
            mode_target = max(target, key=target.get)
            mode_v1 = max(v1, key=v1.get)
            r = {
                "v1_exact": tv(v1, target),
                "v1_empirical": tv(emp_v1, target),
                "perfect_empirical": tv(emp_perfect, target),
                "v1_empirical_vs_exact": tv(emp_v1, v1),
                "p_mode_target": target[mode_target],
                "p_mode_v1": v1.get(mode_target, 0.0),
                "v1_mode_is_target_mode": float(mode_v1 == mode_target),
                "v1_more_on_mode": float(v1.get(mode_target, 0.0) > target[mode_target]),
                "tokens_target": sum(q * len(k) for k, q in target.items()),  # expected tokens per string
                "tokens_v1": sum(q * len(k) for k, q in v1.items()),
            }
            row["by_alpha"][str(alpha)] = {k: round(v, 6) for k, v in r.items()}
            for k, v in r.items():
                summary[alpha][k].append(v)
        rows.append(row)
    wall = time.perf_counter() - t_start

    table = {str(a): {k: summarize(v) for k, v in d.items()} for a, d in summary.items()}
    segs = np.array([r["segmentations"] for r in rows])
    by_segs = {}  # v1's exact TV by how many segmentations a string has
    for lo, hi in BINS:
        sel = [r for r in rows if lo <= r["segmentations"] <= hi]
        by_segs[f"{lo}-{hi}"] = {"n": len(sel), **{str(a): float(np.mean([r["by_alpha"][str(a)]["v1_exact"] for r in sel]))
                                                   if sel else None for a in args.alphas}}
    result = {
        "settings": {"strings": args.strings, "samples": args.samples, "alphas": args.alphas,
                     "seed": args.seed, "max_segs": args.max_segs, "overrides": args.overrides,
                     "tokenizer": tok.describe(), "data": run.data.name,
                     "string_bytes": "4-12 (raw UTF-8), one word or two with the text's leading space"},
        "n_strings": len(rows), "skipped": skipped,
        "segmentations": {"min": int(segs.min()), "median": float(np.median(segs)), "max": int(segs.max()),
                          "total": int(segs.sum())},
        "summary": table,
        "v1_exact_by_segmentations": by_segs,
        "wall_time_s": {"total": wall, "setup": t_setup},
        "strings": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    _plot(table, args, len(rows), out.with_suffix(".png"))

    print(f"{len(rows)} strings ({len(skipped)} skipped), segmentations per string "
          f"min {segs.min()} median {np.median(segs):g} max {segs.max()}; N={args.samples} draws; "
          f"wall {wall:.0f} s (setup {t_setup:.0f} s)")
    print(f"{'alpha':>5} | {'v1 exact TV mean/median/p90':>28} | {'v1 draws TV':>20} | "
          f"{'perfect draws TV (floor)':>24} | {'v1 draws vs v1 exact':>20} | P(MAP) target / v1 | v1 mode≠MAP")
    for a in args.alphas:
        t = table[str(a)]

        def f(k, t=t):
            return f"{t[k]['mean']:.3f}/{t[k]['median']:.3f}/{t[k]['p90']:.3f}"

        print(f"{a:>5} | {f('v1_exact'):>28} | {f('v1_empirical'):>20} | {f('perfect_empirical'):>24} | "
              f"{f('v1_empirical_vs_exact'):>20} | {t['p_mode_target']['mean']:.3f} / {t['p_mode_v1']['mean']:.3f}"
              f" | {1 - t['v1_mode_is_target_mode']['mean']:.1%}")
    print("expected tokens per string, target / v1 (Viterbi " + f"{np.mean([len(r['viterbi']) for r in rows]):.3f}): "
          + "; ".join(f"alpha {a}: {table[str(a)]['tokens_target']['mean']:.3f} / {table[str(a)]['tokens_v1']['mean']:.3f}"
                      f" (v1 more on the MAP in {table[str(a)]['v1_more_on_mode']['mean']:.0%})" for a in args.alphas))
    print("v1 exact TV (mean) by number of segmentations: " + "; ".join(
        f"{k} (n={v['n']}): " + " ".join(f"{v[str(a)]:.3f}" for a in args.alphas)
        for k, v in by_segs.items() if v["n"]))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}")
    return 0


def _plot(table: dict, args, n: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = [float(x) for x in table]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    v1 = table
    ax.fill_between(a, [v1[k]["v1_exact"]["median"] for k in table], [v1[k]["v1_exact"]["p90"] for k in table],
                    color="C3", alpha=0.15, label="v1 exact: median–90th percentile")
    ax.plot(a, [table[k]["v1_exact"]["mean"] for k in table], "o-", color="C3", label="v1, exact distribution (mean)")
    ax.plot(a, [table[k]["v1_empirical"]["mean"] for k in table], "x--", color="C3", alpha=0.7,
            label=f"v1, {args.samples} draws (mean)")
    ax.plot(a, [table[k]["perfect_empirical"]["mean"] for k in table], "s-", color="C0",
            label=f"perfect, {args.samples} draws (mean) = noise floor")
    ax.set_xscale("log")
    ax.set_xticks(a)
    ax.set_xticklabels([f"{x:g}" for x in a])
    ax.set_xlabel("alpha (inverse temperature)")
    ax.set_ylabel("TV distance from P(seg) ∝ exp(alpha·score)")
    ax.set_title(f"Sampler bias on {n} real strings (unigram 2048, shakespeare val)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
