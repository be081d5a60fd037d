"""Sweep report: ``python -m lmlab report SWEEP_DIR [SWEEP_DIR ...] [out=DIR]`` -> Markdown + PNG plots.

One command for both tasks, dispatching on what the directories contain: image-text (digits) runs
(a ``summary.json`` with ``task: image_text``) get the digits table and plot of
``lmlab.multimodal.report`` (``report.md``/``report.png`` in the sweep directory, or ``out``); every
other run directory gets the language-model report below. Directory names may contain ``=`` and
``,`` (``outputs/attention=mla,pos=rope``): an argument that is not one of this command's keys is a
directory.

Language-model runs: reads every run directory under SWEEP_DIR (any directory holding a ``config.yaml``; layout in
``lmlab.train.run``): ``config.yaml``, ``summary.json``, ``metrics.csv``, ``probe.json`` (optional),
``error.txt`` (a failed multirun job). Writes ``SWEEP_DIR/report/`` (or ``out``):

- ``report.md``: per-variant means ± seed std (val bits/byte, speed, bytes per token, continuation
  metrics boundary / mid-token / gap, plain and healed), then a table of every run with its axes;
- ``val_bpb.png``: validation bits-per-byte curves, one line per variant (mean over seeds, band =
  min..max over seeds);
- ``continuation.png``: each continuation metric at boundary vs mid-token cuts, plain and healed,
  bars = mean over seeds, error bars = std over seeds;
- ``bytes_per_token.png``: bytes per token in training (sampled segmentation) vs validation
  (deterministic).

Design choices: the *axes* are the config keys whose values differ across runs (bookkeeping keys
such as run_name/run_dir excluded; a key absent from a run counts as a value). A *variant* is one
combination of the axes other than ``seed``; seeds are the replicates behind every error bar.
Nothing here trains or loads a model, so a report builds anywhere the directories are.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from lmlab.cli import UsageError, arg, parse

BOOKKEEPING = {"run_name", "run_dir", "sweep_name", "out_dir", "cache_dir", "resume", "extra",
               "trainer.progress_bar", "logger", "data.num_workers", "trainer.num_threads"}
CONT_METRICS = ("p_char", "p_word", "greedy_char", "greedy_word")


@dataclass
class Run:
    path: Path
    name: str
    config: dict  # flattened: "tokenizer.mode" -> value
    summary: dict = field(default_factory=dict)
    curve: list = field(default_factory=list)  # [(step, val_bpb)]
    probe: dict = field(default_factory=dict)
    status: str = "ok"
    variant: str = ""


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _bookkeeping(key: str) -> bool:
    return any(key == b or key.startswith(b + ".") for b in BOOKKEEPING)


def read_curve(path: Path) -> list[tuple[int, float]]:
    if not path.exists():
        return []
    pts = {}
    with path.open() as f:
        for row in csv.DictReader(f):
            v = row.get("val/bpb", "")
            if v not in ("", None):
                pts[int(float(row["step"]))] = float(v)  # a resumed run may repeat a step: keep last
    return sorted(pts.items())


def load_runs(sweep_dir: Path) -> list[Run]:
    """Run directories: those with a config.yaml, or with an error.txt (a failed multirun job, whose
    config is then read from Hydra's ``.hydra/config.yaml`` if there)."""
    dirs = {p.parent for pat in ("config.yaml", "error.txt") for p in sweep_dir.rglob(pat)}
    runs = []
    for d in sorted(dirs):
        rel = d.relative_to(sweep_dir).parts
        if ".hydra" in rel or (rel and rel[0] == "report"):
            continue
        cfg_path = d / "config.yaml" if (d / "config.yaml").exists() else d / ".hydra" / "config.yaml"
        raw = yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}
        r = Run(d, str(d.relative_to(sweep_dir)) if rel else d.name, flatten(raw or {}))
        if (d / "summary.json").exists():
            r.summary = json.loads((d / "summary.json").read_text())
            if r.summary.get("task") == "image_text":
                continue  # the digits report's (lmlab.multimodal.report)
        if (d / "probe.json").exists():
            r.probe = json.loads((d / "probe.json").read_text())
        r.curve = read_curve(d / "metrics.csv")
        r.status = "failed" if (d / "error.txt").exists() else ("ok" if r.summary else "incomplete")
        runs.append(r)
    return runs


def find_axes(runs: list[Run]) -> list[str]:
    """Config keys whose values differ across the complete runs (all runs if none is complete)."""
    runs = [r for r in runs if r.status == "ok"] or runs
    keys = sorted({k for r in runs for k in r.config if not _bookkeeping(k)})
    return [k for k in keys if len({repr(r.config.get(k, "—")) for r in runs}) > 1]


def _short_names(keys: list[str]) -> dict[str, str]:
    last = defaultdict(list)
    for k in keys:
        last[k.rsplit(".", 1)[-1]].append(k)
    return {k: (k.rsplit(".", 1)[-1] if len(last[k.rsplit(".", 1)[-1]]) == 1 else k) for k in keys}


def assign_variants(runs: list[Run], axes: list[str]) -> list[str]:
    vaxes = [a for a in axes if a != "seed"]
    short = _short_names(vaxes)
    for r in runs:
        vals = {a: r.config.get(a, "—") for a in vaxes}  # absent keys and false flags say nothing
        r.variant = " ".join(f"{short[a]}={_fmt(v)}" for a, v in vals.items()
                             if v not in ("—", None, False)) or "all"
    return list(dict.fromkeys(r.variant for r in runs))


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _get(d: dict, *path, default=float("nan")):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _ms(vals: list[float]) -> tuple[float, float]:
    v = np.array([x for x in vals if x is not None and not math.isnan(x)], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _pm(vals: list[float], digits: int = 3) -> str:
    m, s = _ms(vals)
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def probe_variants(runs: list[Run]) -> list[str]:
    names = {k for r in runs for k, v in r.probe.items() if isinstance(v, dict) and "gap" in v}
    return sorted(names, key=lambda n: (n != "plain", n))


# ---------------------------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------------------------


def plot_curves(groups: dict[str, list[Run]], path: Path) -> None:
    """val bits/byte against steps, and against training bytes seen (steps x tokens/step x the run's
    training bytes/token from summary.json), since sampled segmentation packs fewer bytes per step."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5), sharey=True)
    for variant, rs in groups.items():
        by_step = defaultdict(list)
        for r in rs:
            for st, v in r.curve:
                by_step[st].append(v)
        if not by_step:
            continue
        steps = sorted(by_step)
        mean = [np.mean(by_step[st]) for st in steps]
        (line,) = axes[0].plot(steps, mean, marker=".", label=f"{variant} (n={len(rs)})")
        if len(rs) > 1:
            axes[0].fill_between(steps, [min(by_step[st]) for st in steps], [max(by_step[st]) for st in steps],
                                 color=line.get_color(), alpha=0.15)
        for r in rs:
            s = r.summary
            if s.get("step") and s.get("tokens_seen") and s.get("train_bytes_per_token"):
                per_step = s["tokens_seen"] / s["step"] * s["train_bytes_per_token"] / 1e6
                axes[1].plot([st * per_step for st, _ in r.curve], [v for _, v in r.curve], marker=".",
                             color=line.get_color(), alpha=0.8)
    axes[0].set_xlabel("step")
    axes[1].set_xlabel("training text seen (MB, at the run's training bytes/token)")
    axes[0].set_ylabel("validation bits per byte (deterministic segmentation)")
    axes[0].set_title("by step (mean over seeds; band = min..max)")
    axes[1].set_title("by training bytes (one line per run)")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_continuation(groups: dict[str, list[Run]], pvars: list[str], path: Path) -> None:
    import matplotlib.pyplot as plt

    variants = list(groups)
    bars = [(pv, kind) for pv in pvars for kind in ("boundary", "mid_token", "mid_token_ref")]
    fig, axes = plt.subplots(len(CONT_METRICS), 1, figsize=(max(8, 1.6 * len(variants) + 3), 3.2 * len(CONT_METRICS)))
    width = 0.8 / max(1, len(bars))
    x = np.arange(len(variants))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(np.atleast_1d(axes), CONT_METRICS):
        for b, (pv, kind) in enumerate(bars):
            ms = [_ms([_get(r.probe, pv, kind, metric) for r in groups[v]]) for v in variants]
            if all(math.isnan(m) for m, _ in ms):
                continue  # greedy metrics have no reference row
            ax.bar(x + (b - (len(bars) - 1) / 2) * width, [m for m, _ in ms], width,
                   yerr=[0 if math.isnan(s) else s for _, s in ms], capsize=2,
                   label=f"{pv} / {kind}", hatch={"mid_token": "//", "mid_token_ref": ".."}.get(kind),
                   color=colors[pvars.index(pv) % len(colors)], alpha=1.0 if kind == "boundary" else 0.55)
        ax.set_ylabel(metric)
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=15, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=7, ncol=2)
    np.atleast_1d(axes)[0].set_title("continuation: boundary vs mid-token cuts; ref = mid-token targets scored "
                                     "from the boundary prompt (error bars: std over seeds)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bytes_per_token(groups: dict[str, list[Run]], path: Path) -> None:
    import matplotlib.pyplot as plt

    variants = list(groups)
    x = np.arange(len(variants))
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(variants) + 3), 4.5))
    for i, (key, label) in enumerate((("train_bytes_per_token", "train (as segmented in training)"),
                                      ("val_bytes_per_token", "validation (deterministic)"))):
        ms = [_ms([r.summary.get(key, float("nan")) for r in groups[v]]) for v in variants]
        ax.bar(x + (i - 0.5) * 0.38, [m for m, _ in ms], 0.38, label=label,
               yerr=[0 if math.isnan(s) else s for _, s in ms], capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(variants, rotation=15, ha="right", fontsize=7)
    ax.set_ylabel("bytes per token")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def build_report(sweep_dirs, out: str | Path | None = None) -> Path:
    """One report over one sweep directory, or over several (then ``out`` is required and run
    names are prefixed with their sweep directory's name)."""
    import matplotlib

    matplotlib.use("Agg")
    dirs = [Path(d) for d in ([sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else sweep_dirs)]
    if len(dirs) > 1 and out is None:
        raise UsageError("several sweep directories need out=DIR")
    out = Path(out) if out else dirs[0] / "report"
    runs = []
    for d in dirs:
        for r in load_runs(d):
            r.name = f"{d.name}/{r.name}" if len(dirs) > 1 else r.name
            runs.append(r)
    sweep_dir = dirs[0] if len(dirs) == 1 else Path(" + ".join(d.name for d in dirs))
    if not runs:
        raise UsageError(f"no run directories (config.yaml) under {', '.join(map(str, dirs))}")
    out.mkdir(parents=True, exist_ok=True)
    axes = find_axes(runs)
    variants = assign_variants(runs, axes)
    done = [r for r in runs if r.status == "ok"]
    groups = {v: [r for r in done if r.variant == v] for v in variants}
    groups = {v: rs for v, rs in groups.items() if rs}
    pvars = probe_variants(done)

    plot_curves(groups, out / "val_bpb.png")
    plot_bytes_per_token(groups, out / "bytes_per_token.png")
    if pvars:
        plot_continuation(groups, pvars, out / "continuation.png")

    md = [f"# Sweep report: {sweep_dir.name}", "",
          f"{len(runs)} runs ({len(done)} complete, {sum(r.status == 'failed' for r in runs)} failed, "
          f"{sum(r.status == 'incomplete' for r in runs)} incomplete); {len(groups)} variants.",
          f"Axes (config keys that differ across runs): {', '.join(f'`{a}`' for a in axes) or 'none'}.",
          "Means ± std over seeds (std shown when a variant has more than one seed).", ""]
    md += ["## Training", "", "![val bits per byte](val_bpb.png)", ""]
    md += _table(
        ["variant", "n", "val bits/byte", "train loss", "tokens/s", "wall s", "bytes/token train",
         "bytes/token val"],
        [[v, len(rs), _pm([r.summary.get("val_bpb", math.nan) for r in rs], 4),
          _pm([r.summary.get("train_loss", math.nan) for r in rs]),
          _pm([r.summary.get("tokens_per_sec", math.nan) for r in rs], 0),
          _pm([r.summary.get("wall_time_s", math.nan) for r in rs], 0),
          _pm([r.summary.get("train_bytes_per_token", math.nan) for r in rs]),
          _pm([r.summary.get("val_bytes_per_token", math.nan) for r in rs])] for v, rs in groups.items()])
    md += ["", "![bytes per token](bytes_per_token.png)", ""]
    if pvars:
        md += ["## Continuation probe (SPEC §5)", "",
               "p_* = probability of the true next character / rest of the word, summed over every token "
               "sequence spelling it (a lower bound: see the search bound below); greedy_* = greedy decoding "
               "reproduces it. bnd = prompts cut at a token boundary, mid = cut inside a token, gap = bnd − mid. "
               "ref = the mid-token prompt's targets scored from the paired boundary prompt "
               "(P(lead + y) / P(lead)): what the model believes when the prompt is tokenized as in training; "
               "gap_m = ref − mid, the distortion caused by the cut alone.", "",
               "![continuation](continuation.png)", ""]
        for pv in pvars:
            md += [f"### {pv}", ""]
            prob = [(m, k) for m in ("p_char", "p_word") for k in ("boundary", "mid_token", "mid_token_ref",
                                                                   "gap", "gap_matched")]
            greedy = [(m, k) for m in ("greedy_char", "greedy_word") for k in ("boundary", "mid_token", "gap")]
            short = {"boundary": "bnd", "mid_token": "mid", "mid_token_ref": "ref", "gap": "gap",
                     "gap_matched": "gap_m"}
            for cols in (prob, greedy):
                md += _table(["variant"] + [f"{m} {short[k]}" for m, k in cols],
                             [[v] + [_pm([_get(r.probe, pv, k, m) for r in rs]) for m, k in cols]
                              for v, rs in groups.items()])
                md += [""]
            bound = max((max(_get(r.probe, pv, k, "dropped_max", default=0.0) for k in ("boundary", "mid_token"))
                         for r in done if r.probe), default=0.0)
            md += [f"Search bound: at most {bound:.2e} probability mass left unexplored per query "
                   "(exact value within [p, p + bound]).", ""]
    md += ["## Every run", ""]
    head = ["run", "status"] + axes + ["step", "val bits/byte", "bytes/tok train", "bytes/tok val", "tokens/s"]
    head += [f"{m} mid ({pv})" for pv in pvars for m in ("p_char", "greedy_word")]
    rows = []
    for r in runs:
        s = r.summary
        rows.append([r.name, r.status] + [_fmt(r.config.get(a, "—")) for a in axes] + [
            s.get("step", "—"), _num(s.get("val_bpb"), 4), _num(s.get("train_bytes_per_token")),
            _num(s.get("val_bytes_per_token")), _num(s.get("tokens_per_sec"), 0)]
            + [_num(_get(r.probe, pv, "mid_token", m, default=None)) for pv in pvars
               for m in ("p_char", "greedy_word")])
    md += _table(head, rows)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:.{digits}f}"


USAGE = "python -m lmlab report SWEEP_DIR [SWEEP_DIR ...] [out=DIR]"


@dataclass
class Args:
    out: Optional[str] = arg(None, "output directory (default: SWEEP_DIR/report; required for several directories)")


def has_image_text_runs(d: Path) -> bool:
    return any(json.loads(p.read_text()).get("task") == "image_text" for p in d.rglob("summary.json"))


def main(argv: list[str] | None = None) -> int:
    p = parse("report", Args, sys.argv[1:] if argv is None else argv, positional=True)
    if not p.positional:
        raise UsageError(f"report needs at least one run directory: {USAGE}")
    dirs = [Path(d) for d in p.positional]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise UsageError(f"not a directory: {', '.join(missing)}")
    digits = [d for d in dirs if has_image_text_runs(d)]
    if digits:
        from lmlab.multimodal.report import build_report as build_digits_report

        build_digits_report(digits, p.args.out)
    lm = [d for d in dirs if load_runs(d)]
    if lm or not digits:
        path = build_report(lm or dirs, p.args.out if not digits else Path(p.args.out or lm[0]) / "report")
        print(f"wrote {path} and its plots")
    return 0
