"""Attention: quality vs KV cache (issue 15 item 4): val bits/byte against cache bytes per token.

Reads a sweep directory of ``experiment=attention_cache`` (or any LM sweep whose runs differ by
``attention.name``) and writes one figure and one JSON:

- left panel: final val bits/byte per attention variant, mean over seeds with ± 1 sample std
  (ddof = 1) as error bars (none for n = 1), against the KV-cache bytes per token of the whole model;
- right panel (when ``--decode`` gives the JSON of ``scripts/bench/attention.py --json``): decode
  tokens/s against context, one line per variant, as that benchmark measured them.

Cache bytes per token are the variants' own formulas, not a re-derivation: the run's model is built on
the meta device from its ``config.yaml`` and ``Attention.cache_elems_per_token()`` is summed over the
layers, times 4 bytes (fp32; the bench measures the same numbers from the cache tensors, and the
contract tests check formula == measurement). A constant-state variant (vq) caches 0 bytes per token;
its state (``cache_state_elems``, also fp32) is reported beside it and annotated on the plot.

Statistics are lmlab's (``lmlab.eval.stats``, as ``python -m lmlab report`` uses them): per variant
mean, sample std and n over seeds; against the baseline (default ``mha``) the mean difference paired
by seed with its 95% percentile-bootstrap interval (10,000 resamples, fixed generator seed). Only
complete runs (a ``summary.json``) count.

    PYTHONPATH=$PWD python scripts/findings/attention_cache.py outputs/attention_cache \\
        --decode docs/findings/attention_decode.json --out docs/findings/attention_cache
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AXIS = "attention.name"
ORDER = ("mha", "mla", "gqa", "mqa", "vq")  # table order: the baseline, then by cache bytes per token
BYTES = 4  # fp32
COLORS = {"mha": "C0", "mla": "C1", "gqa": "C2", "mqa": "C3", "vq": "C4"}  # the same in both panels


def model_figures(run) -> dict:
    """Parameters and cache figures of a run's model, built on the meta device from its config.yaml."""
    import torch

    from lmlab.config import RunConfig, from_dict, load_variants
    from lmlab.model.transformer import build_model

    load_variants()
    problems: list[str] = []
    cfg = from_dict(RunConfig, run.raw, "", problems)
    if cfg is None or problems:
        raise ValueError(f"{run.path}/config.yaml: {'; '.join(problems) or 'not a run config'}")
    vocab = int(run.summary.get("vocab_size") or cfg.tokenizer.vocab_size)
    with torch.device("meta"):
        model = build_model(cfg, vocab)
    attns = [b.attn for b in model.blocks]
    return {
        "params": model.n_params(),
        # without the token embedding (tied with the LM head here), where the variants differ
        "params_non_embedding": model.n_params() - model.tok_emb.weight.numel(),
        "ffn_dim": cfg.model.ffn_dim,
        "pos": cfg.pos.name,
        "n_layer": len(attns),
        "cache_formula_per_layer": attns[0].cache_formula(),
        "cache_elems_per_token_per_layer": attns[0].cache_elems_per_token(),
        "cache_bytes_per_token": BYTES * sum(a.cache_elems_per_token() for a in attns),
        "state_bytes": BYTES * sum(a.cache_state_elems() for a in attns),
    }


def analyse(sweep_dir: Path, baseline: str = "mha") -> dict:
    """-> {"variants": [...], "baseline": ..., "runs": n, "seeds": [...]} for the complete runs."""
    from lmlab.cli.report import load_runs
    from lmlab.eval import stats

    runs = [r for r in load_runs(sweep_dir) if r.status == "ok"]
    if not runs:
        raise SystemExit(f"error: no complete run (summary.json) under {sweep_dir}")
    vs = stats.variants(runs, "val_bpb", axes=[AXIS])
    names = [v.values[AXIS] for v in vs]
    if baseline not in names:
        raise SystemExit(f"error: baseline {AXIS}={baseline} has no complete run under {sweep_dir}; "
                         f"variants: {', '.join(map(str, names))}")
    diffs = {d.label: d for d in stats.compare(vs, {AXIS: baseline}, "val_bpb")}
    out = []
    for v in sorted(vs, key=lambda v: (ORDER.index(v.values[AXIS]) if v.values[AXIS] in ORDER else len(ORDER),
                                       str(v.values[AXIS]))):
        figs = model_figures(v.runs[0])
        d = diffs.get(v.label)
        out.append({
            "variant": v.values[AXIS], **figs, "n": v.n, "seeds": sorted(v.by_seed),
            "val_bpb": {str(s): x for s, x in sorted(v.by_seed.items())},
            "mean": v.mean, "std": v.std,
            "diff_vs_baseline": 0.0 if d is None else d.mean,
            "lo": None if d is None else d.lo, "hi": None if d is None else d.hi,
            "pairs": v.n if d is None else d.n_pairs,
            "beyond_noise": bool(d is not None and d.significant),
            "wall_time_s": [r.summary.get("wall_time_s") for r in v.runs],
        })
    return {"sweep": str(sweep_dir), "baseline": baseline, "runs": len(runs),
            "seeds": sorted({s for v in vs for s in v.by_seed}), "variants": out}


def fmt(x, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(res: dict) -> str:
    base = res["baseline"]
    p0 = next(v["params_non_embedding"] for v in res["variants"] if v["variant"] == base)
    lines = [
        "| attention | params (non-emb.) | KV cache B/token (fp32, all layers) | val bits/byte, mean ± std (n) "
        f"| Δ vs {base}, paired [95% CI] | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for v in res["variants"]:
        cache = f"{v['cache_bytes_per_token']:,}"
        if v["state_bytes"]:
            cache += f" (+ {v['state_bytes'] / 1024:,.0f} KiB constant state)"
        std = f" ± {v['std']:.4f}" if v["std"] is not None else ""
        if v["variant"] == base:
            delta, verdict = "baseline", ""
        else:
            ci = f" [{v['lo']:+.4f}, {v['hi']:+.4f}]" if v["lo"] is not None else " (no interval)"
            delta = f"{v['diff_vs_baseline']:+.4f}{ci}"
            verdict = ("no interval" if v["lo"] is None else
                       ("worse" if v["diff_vs_baseline"] > 0 else "better") + ", beyond noise"
                       if v["beyond_noise"] else "within noise")
        rel = 100 * (v["params_non_embedding"] / p0 - 1)
        lines.append(f"| {v['variant']} | {v['params']:,} ({v['params_non_embedding']:,}, {rel:+.1f}%) | {cache} "
                     f"| {v['mean']:.4f}{std} ({v['n']}) | {delta} | {verdict} |")
    return "\n".join(lines)


def plot(res: dict, decode: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2 if decode else 1, figsize=(11 if decode else 5.8, 4.2), squeeze=False)
    ax = axes[0][0]
    for v in res["variants"]:
        x = v["cache_bytes_per_token"]
        ax.errorbar([x], [v["mean"]], yerr=None if v["std"] is None else [[v["std"]], [v["std"]]],
                    fmt="o", capsize=4, label=v["variant"], color=COLORS.get(v["variant"]))
        note = v["variant"] + (f" (state {v['state_bytes'] / 1024:.0f} KiB)" if v["state_bytes"] else "")
        ax.annotate(note, (x, v["mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("KV cache per token, bytes (fp32, all layers)")
    ax.set_ylabel("val bits/byte (mean ± 1 std over seeds)")
    ns = sorted({v["n"] for v in res["variants"]})
    ax.set_title(f"quality vs cache ({'/'.join(map(str, ns))} seeds per variant)", fontsize=10)
    ax.grid(alpha=0.3)
    if decode:
        ax2 = axes[0][1]
        for name, by_ctx in decode["decode"].items():
            cs = sorted(by_ctx, key=int)
            ax2.plot([int(c) for c in cs], [by_ctx[c]["tok_s"] for c in cs], "o-", label=name, color=COLORS.get(name))
        ax2.set_xscale("log", base=2)
        ax2.set_xlabel("context C (tokens already cached)")
        ax2.set_ylabel("decode tokens/s (one layer)")
        s = decode.get("settings", {})
        ax2.set_title(f"decode, scripts/bench/attention.py: d_model {s.get('d_model')}, {s.get('n_head')} heads, "
                      f"{s.get('threads')} thread(s), {s.get('device')}", fontsize=9)
        ax2.grid(alpha=0.3, which="both")
        ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path, nargs="?", default=Path("outputs/attention_cache"))
    ap.add_argument("--decode", type=Path, default=None, help="JSON of scripts/bench/attention.py --json")
    ap.add_argument("--baseline", default="mha")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "findings" / "attention_cache",
                    help="writes OUT.png and OUT.json")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"error: sweep directory {args.sweep_dir} does not exist", file=sys.stderr)
        return 2
    res = analyse(args.sweep_dir, args.baseline)
    decode = json.loads(args.decode.read_text()) if args.decode else None
    if decode:
        res["decode"] = decode
    plot(res, decode, args.out.with_suffix(".png"))
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(table(res))
    print(f"\nwrote {args.out.with_suffix('.png')} and {args.out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
