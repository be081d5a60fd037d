"""Comparison table and plot of an image-text sweep; part of ``python -m lmlab report outputs/pos_multimodal``.

Reads every ``summary.json`` under the sweep directory whose ``task`` is ``image_text``, groups runs by
(image head, patch, pos), and reports mean ± std (sample std over seeds) of the best-validation
checkpoint's metrics on the evaluation split. The column "Δ vs rope" is the paired (same seed)
difference of image bits/pixel against the flattened RoPE-1D baseline; it is marked ``*`` only when
SPEC §15.4's rule holds: at least two seeds, the same sign in every seed, and |mean Δ| > 2 std of
either scheme. Beside it, the paired bootstrap 95% interval of that difference
(``lmlab.eval.stats.paired_bootstrap``, as in the language-model report; none below two shared seeds).
Runs of the held-out sub-grid probe (``data.subgrid_holdout``) are grouped apart from whole-image runs
and add the held-out and training-size bits/pixel and their difference (the generalization gap; the
sizes differ, so only its differences between schemes mean something), each of the held-out figure and
the gap with a paired Δ vs rope and its interval (the probe's figures); their plot shows those two instead of unconditional / caption-conditioned.
Error bars in the plot: std over seeds, none where n = 1. Writes ``report.md`` and ``report.png`` into the sweep directory (or ``out``) and returns
the table (``build_report``; the command ``lmlab.cli.report`` calls it when it finds such runs).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

METRICS = [  # (summary key without split prefix, column title, format)
    ("img_bpp_uncond", "img bpp uncond", "{:.3f}"),
    ("img_bpp_cond", "img bpp cond", "{:.3f}"),
    ("text_bpb_understand", "caption bpb given image", "{:.3f}"),
    ("text_bpb_generate", "caption bpb prior", "{:.3f}"),
    ("caption_acc", "caption acc", "{:.3f}"),
    ("caption_acc_shuffled", "caption acc, other image", "{:.3f}"),
    ("gen_acc", "gen acc", "{:.3f}"),
    ("gen_diversity", "gen diversity", "{:.2f}"),
]


def load_runs(sweep_dir: str) -> list[dict]:
    runs = []
    for p in sorted(Path(sweep_dir).rglob("summary.json")):
        s = json.loads(p.read_text())
        if s.get("task") == "image_text":
            s["_dir"] = str(p.parent)
            split = s.get("eval_split", "test")
            if f"{split}_heldout_img_bpp" in s and f"{split}_seen_img_bpp" in s:  # the probe's generalization gap
                s[f"{split}_heldout_gap"] = s[f"{split}_heldout_img_bpp"] - s[f"{split}_seen_img_bpp"]
            runs.append(s)
    return runs


def _mean_std(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else float("nan")


def _fmt(xs: list[float], fmt: str) -> str:
    m, s = _mean_std(xs)
    return fmt.format(m) + ("" if math.isnan(s) else " ± " + fmt.replace("+", "").format(s))


def compare(a: dict[int, float], b: dict[int, float]) -> tuple[float, bool]:
    """Paired Δ = mean(a - b) over shared seeds, and whether SPEC §15.4 calls it real."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return float("nan"), False
    d = np.array([a[s] - b[s] for s in seeds])
    if len(seeds) < 2:
        return float(d.mean()), False
    spread = max(np.std([a[s] for s in seeds], ddof=1), np.std([b[s] for s in seeds], ddof=1))
    same_sign = bool((d > 0).all() or (d < 0).all())
    return float(d.mean()), same_sign and abs(d.mean()) > 2 * spread


def interval(a: dict[int, float], b: dict[int, float]) -> tuple[float, float] | None:
    """Bootstrap 95% interval of the mean paired (same seed) difference a - b; None below 2 pairs."""
    from lmlab.eval.stats import paired_bootstrap

    seeds = sorted(set(a) & set(b))
    return paired_bootstrap([a[s] - b[s] for s in seeds])


PROBE_METRICS = [  # the held-out sub-grid probe (data.subgrid_holdout), when a run has it
    ("heldout_img_bpp", "held-out sizes img bpp", "{:.3f}"),
    ("seen_img_bpp", "training sizes img bpp", "{:.3f}"),
    ("heldout_gap", "held-out − training sizes", "{:+.3f}"),
]


def _probe(r: dict) -> str:
    """The held-out sizes of a probe run ("" for whole-image runs): runs only compare within one kind."""
    return ",".join(r.get("subgrid_holdout") or [])


def table(runs: list[dict]) -> tuple[str, dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["image_head"], r["patch"], _probe(r), r["pos"])].append(r)
    probe = any(_probe(r) for r in runs)
    metrics = METRICS + (PROBE_METRICS if probe else [])
    # the compared figure: image bpp on whole images, or on the held-out sizes in a probe run
    lines = []
    header = (["head", "p"] + (["held out"] if probe else []) + ["pos", "seeds", "best step"]
              + [t for _, t, _ in metrics] + ["Δ img bpp vs rope", "95% interval"])
    if probe:
        header += ["Δ held-out bpp vs rope", "95% interval (held-out)", "Δ gap vs rope", "95% interval (gap)"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    refs = {}
    for (head, p, held, pos), rs in sorted(groups.items()):
        split = rs[0].get("eval_split", "test")
        row = [head, str(p)] + ([held.replace(",", ", ") or "none"] if probe else [])
        row += [pos, str(len(rs)), _fmt([r["best_step"] for r in rs], "{:.0f}")]
        row += [_fmt([r[f"{split}_{k}"] for r in rs if f"{split}_{k}" in r], f) if any(f"{split}_{k}" in r for r in rs)
                else "" for k, _, f in metrics]
        for key in ["img_bpp"] + (["heldout_img_bpp", "heldout_gap"] if probe else []):
            if not all(f"{split}_{key}" in r for r in rs):
                row += ["", ""]
                continue
            img = {r["seed"]: r[f"{split}_{key}"] for r in rs}
            base = {r["seed"]: r[f"{split}_{key}"] for r in groups.get((head, p, held, "rope"), [])}
            delta, real = compare(img, base) if pos != "rope" else (float("nan"), False)
            row.append("" if math.isnan(delta) else f"{delta:+.3f}{' *' if real else ''}")
            ci = interval(img, base) if pos != "rope" else None
            row.append("" if ci is None else f"[{ci[0]:+.3f}, {ci[1]:+.3f}]")
        lines.append("| " + " | ".join(row) + " |")
        for k in ("ref_uniform_bpp", "ref_marginal_bpp", "ref_label_marginal_bpp", "judge_acc"):
            refs[k] = rs[0][k]
        refs["split"] = split
    return "\n".join(lines), refs


def plot(runs: list[dict], path: Path, refs: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probe = [r for r in runs if _probe(r)]
    if probe:  # a probe sweep: held-out sizes beside training sizes (whole-image runs are left out)
        runs = probe
        panels = (("heldout_img_bpp", f"held-out sizes ({_probe(runs[0]).replace(',', ', ')})"),
                  ("seen_img_bpp", "training sizes"))
    else:
        panels = (("img_bpp_uncond", "unconditional"), ("img_bpp_cond", "caption-conditioned"))
    heads = sorted({r["image_head"] for r in runs})
    poss = sorted({r["pos"] for r in runs}, key=lambda s: (s != "rope", s))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (key, title) in zip(axes, panels):
        for i, head in enumerate(heads):
            ms, ss = [], []
            for pos in poss:
                xs = [r[f"{r.get('eval_split', 'test')}_{key}"] for r in runs
                      if r["pos"] == pos and r["image_head"] == head]
                m, s = _mean_std(xs) if xs else (float("nan"), float("nan"))
                ms.append(m)
                ss.append(s)  # NaN (n = 1): no error bar
            x = np.arange(len(poss)) + (i - (len(heads) - 1) / 2) * 0.35
            ax.bar(x, ms, 0.35, yerr=ss, label=head, capsize=3)
        if not probe:  # the whole-image reference; crops of other sizes have no such baseline
            ax.axhline(refs["ref_marginal_bpp"], color="k", ls="--", lw=1, label="per-position marginal")
        ax.set_xticks(np.arange(len(poss)), poss, rotation=20)
        ax.set_title(f"image bits/pixel, {title}")
        vals = [r[f"{r.get('eval_split', 'test')}_{k}"] for r in runs for k, _ in panels]
        ax.set_ylim(min(vals) - 0.15, max(vals + ([] if probe else [refs["ref_marginal_bpp"]])) + 0.1)
    axes[0].set_ylabel(f"bits/pixel ({refs['split']} split, best val checkpoint)")
    axes[1].legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(sweep_dirs, out=None, log=print) -> Path:
    """The digits table and plot over every image_text run under ``sweep_dirs`` -> the report.md path."""
    dirs = [sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else list(sweep_dirs)
    runs = [r for d in dirs for r in load_runs(d)]
    if not runs:
        raise ValueError(f"no image_text summary.json under {', '.join(map(str, dirs))}")
    text, refs = table(runs)
    note = (f"\nReference points on the {refs['split']} split: uniform {refs['ref_uniform_bpp']:.3f} bpp, per-position "
            f"marginal {refs['ref_marginal_bpp']:.3f}, label-conditional marginal {refs['ref_label_marginal_bpp']:.3f};"
            f" judge accuracy on real images {refs['judge_acc']:.3f}. {len(runs)} runs.\n")
    out = Path(out) if out else Path(dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(text + "\n" + note)
    plot(runs, out / "report.png", refs)
    log(text + "\n" + note + f"wrote {out / 'report.md'} and {out / 'report.png'}")
    return out / "report.md"
