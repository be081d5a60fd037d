"""Sweep report: ``python -m lmlab report DIR [DIR ...] [baseline=...] [x=steps] [where=...] [out=DIR]``.

One command for both tasks, dispatching on what the directories contain: image-text (digits) runs
(a ``summary.json`` with ``task: image_text``) get the digits table and plot of
``lmlab.multimodal.report`` (``report.md``/``report.png`` in the sweep directory, or ``out``); every
other run directory gets the language-model report below. Directory names may contain ``=`` and
``,`` (``outputs/attention=mla,pos=rope``): an argument that is not one of this command's keys is a
directory.

Language-model runs: every run directory under DIR (any directory holding a ``config.yaml``; layout in
``lmlab.train.run``): ``config.yaml``, ``summary.json``, ``metrics.csv``, ``probe.json`` (optional),
``error.txt`` (a failed multirun job). Writes ``DIR/report/`` (or ``out``):

- ``report.md``, answering "which variant is better, and is it real?": the *axes* are the swept
  config keys (``lmlab.eval.stats.swept_axes``: keys that differ across the complete runs, minus seed,
  run bookkeeping and keys implied by another axis); a *variant* is one combination of them, its
  seeds the replicates. Per variant: val bits/byte mean ± std (sample std; none for n = 1) and n; its
  difference from the baseline paired on shared seeds with a bootstrap 95% interval
  (``stats.compare``), read "beyond noise" when the interval excludes 0 and "within noise" when it
  contains it; fewer than two shared seeds give no interval. Then pivot tables of val bits/byte for
  each pair of axes (``stats.pivot``; one table per combination of the other axes' values, at most
  MAX_SLICES, else a pointer to ``where=``), the other per-variant metrics and every run, constant
  columns left out.
- with ``x`` other than steps, a table "at equal x": val bits/byte read off each run's curve at one x
  (``at=``, default the largest x every run reaches; linear interpolation between validations), with
  the same paired comparison -- e.g. ``x=bytes`` compares at equal training text.
- with probe results, their seed statistics: per probe variant (plain, heal_k1, ...) the key probe
  metrics' mean ± std over seeds and paired difference from the baseline with a bootstrap 95%
  interval, and healing's effect (healed − plain, paired within each run) with its interval.
- ``curves.png``: train loss and val bits/byte against ``x`` (steps, tokens, bytes, time, flops),
  one line per variant (mean over seeds at each step; band = ± 1 std where n > 1).
- ``continuation.png`` when runs have a ``probe.json``; ``bytes_per_token.png`` only when a
  tokenizer key is swept (otherwise every bar would be the same).

Labels are the swept choices only (``mla / rope``; other keys ``lr=0.003``). Baseline: ``baseline=``
a label as printed, or ``key=value[,key=value]`` (short or full keys); default the variant made of the
default config's choices (conf/config.yaml defaults) if the sweep has one, else the first in sorted
order. The x axes come from ``metrics.csv`` (``train/tokens_seen``, ``train/tokens_per_sec``) and
``summary.json``: *bytes* = tokens x the run's training bytes/token (a run-wide ratio: exact at the
end, approximate in between, unless metrics.csv has ``train/bytes_seen``); *time* = training time
summed from the measured throughput (validation excluded; without it, wall time pro rata of tokens);
*flops* = tokens x 3 x ``Transformer.flops_per_token`` (forward + backward; the model is built on the
meta device from the run's config, nothing is loaded). Validation frequency: a curve needs points, so
the report warns (in report.md and on stdout) about runs with fewer than 3 validations; the documented
minimum is ``trainer.val_every <= trainer.max_steps / 5``. Nothing here trains or loads a model.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from lmlab.cli import UsageError, arg, parse
from lmlab.eval import stats

# kept out of the axes besides stats.IDENTITY: results do not depend on them (docs/usage.md: threads and workers)
BOOKKEEPING = stats.IDENTITY + ("data.num_workers",)
CONT_METRICS = ("p_char", "p_word", "greedy_char", "greedy_word")
X_AXES = {  # x= -> axis label
    "steps": "optimizer steps",
    "tokens": "training tokens",
    "bytes": "training text (bytes)",
    "time": "training time (s, validation excluded)",
    "flops": "training FLOPs (3 x forward matmuls)",
}
MIN_VALIDATIONS = 3
OTHER_METRICS = (  # (column, summary.json key, digits)
    ("train loss", "train_loss", 3), ("tokens/s", "tokens_per_sec", 0), ("wall s", "wall_time_s", 0),
    ("params", "n_params", 0), ("bytes/token train", "train_bytes_per_token", 3),
    ("bytes/token val", "val_bytes_per_token", 3),
)


@dataclass
class Run:
    path: Path
    name: str
    config: dict  # flattened: "tokenizer.mode" -> value
    raw: dict = field(default_factory=dict)  # config.yaml as written
    summary: dict = field(default_factory=dict)
    train: list = field(default_factory=list)  # metrics.csv train rows: {"step", "loss", "tokens", "tps", "bytes"}
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


def _float(v) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def read_metrics(path: Path) -> tuple[list[dict], list[tuple[int, float]]]:
    """-> (train rows, [(step, val bits/byte)]); a resumed run may repeat a step: the last row wins."""
    if not path.exists():
        return [], []
    train, val = {}, {}
    with path.open() as f:
        for row in csv.DictReader(f):
            step = _float(row.get("step"))
            if step is None:
                continue
            step = int(step)
            v = _float(row.get("val/bpb"))
            if v is not None:
                val[step] = v
            loss = _float(row.get("train/loss"))
            if loss is not None:
                train[step] = {"step": step, "loss": loss, "tokens": _float(row.get("train/tokens_seen")),
                               "tps": _float(row.get("train/tokens_per_sec")),
                               "bytes": _float(row.get("train/bytes_seen"))}
    return [train[s] for s in sorted(train)], sorted(val.items())


def read_curve(path: Path) -> list[tuple[int, float]]:
    return read_metrics(path)[1]


def load_runs(sweep_dir: Path) -> list[Run]:
    """Run directories: those with a config.yaml, or with an error.txt (a failed multirun job, whose
    config is then read from Hydra's ``.hydra/config.yaml`` if there)."""
    sweep_dir = Path(sweep_dir)
    dirs = {p.parent for pat in ("config.yaml", "error.txt") for p in sweep_dir.rglob(pat)}
    runs = []
    for d in sorted(dirs):
        rel = d.relative_to(sweep_dir).parts
        if ".hydra" in rel or (rel and rel[0] == "report"):
            continue
        cfg_path = d / "config.yaml" if (d / "config.yaml").exists() else d / ".hydra" / "config.yaml"
        raw = (yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else {}) or {}
        r = Run(d, str(d.relative_to(sweep_dir)) if rel else d.name, flatten(raw), raw)
        if (d / "summary.json").exists():
            r.summary = json.loads((d / "summary.json").read_text())
            if r.summary.get("task") == "image_text":
                continue  # the digits report's (lmlab.multimodal.report)
        if (d / "probe.json").exists():
            r.probe = json.loads((d / "probe.json").read_text())
        r.train, r.curve = read_metrics(d / "metrics.csv")
        r.status = "failed" if (d / "error.txt").exists() else ("ok" if r.summary else "incomplete")
        runs.append(r)
    return runs


def find_axes(runs: list[Run]) -> list[str]:
    """The swept axes (``stats.swept_axes``) of the complete runs (all runs if none is complete)."""
    return stats.swept_axes([r for r in runs if r.status == "ok"] or runs, ignore=BOOKKEEPING)


# ---------------------------------------------------------------------------------------------
# Baseline and selection.
# ---------------------------------------------------------------------------------------------


def _conf_dir() -> Path:
    from lmlab.config import CONF_DIR

    return Path(CONF_DIR)


def default_value(axis: str, conf: Path | None = None):
    """The value the default config gives ``axis`` (conf/config.yaml and its default group options),
    read from the YAML files without composing; ``KeyError`` when it cannot be told that way."""
    conf = conf or _conf_dir()
    top = yaml.safe_load((conf / "config.yaml").read_text()) or {}
    choices = {}
    for item in top.get("defaults", []):
        if isinstance(item, dict):
            choices.update({str(k): v for k, v in item.items()})
    group, _, rest = axis.partition(".")
    node = top
    if group in choices and rest:
        if choices[group] is None:
            raise KeyError(axis)
        node = _group_option(conf, group, str(choices[group]))
        path = rest.split(".")
    else:
        path = axis.split(".")
    for p in path:
        if not isinstance(node, dict) or p not in node:
            raise KeyError(axis)
        node = node[p]
    return node


def _group_option(conf: Path, group: str, name: str, depth: int = 0) -> dict:
    """A group option's YAML with the same-group options its own defaults list extends merged under it
    (``optim/muon.yaml`` extends ``adamw``: Hydra's order, the listed files first, ``_self_`` last)."""
    node = yaml.safe_load((conf / group / f"{name}.yaml").read_text()) or {}
    merged: dict = {}
    for item in node.pop("defaults", None) or []:
        if isinstance(item, str) and item != "_self_" and depth < 8:
            merged.update(_group_option(conf, group, item, depth + 1))
    return {**merged, **node}


def parse_selection(text: str | None, axes: list[str]) -> dict:
    """``"attention=mla,lr=0.003"`` -> ``{"attention.name": "mla", "optim.lr": 0.003}``: each key a full
    axis name or its short form (``attention`` for ``attention.name``, ``lr`` for ``optim.lr``)."""
    if not text:
        return {}
    short = stats._short_keys(axes)
    by_name = {**{s: a for a, s in short.items()}, **{a: a for a in axes}}
    out = {}
    for part in str(text).split(","):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq:
            raise UsageError(f"{part!r}: expected key=value (axes: {', '.join(axes) or 'none'})")
        if key not in by_name:
            from lmlab.config import did_you_mean

            raise UsageError(f"{key}: not a swept axis{did_you_mean(key, by_name)} (axes: {', '.join(axes) or 'none'})")
        out[by_name[key]] = yaml.safe_load(value) if value.strip() else value
    return out


def _matches(values: dict, sel: dict) -> bool:
    return all(stats.fmt_value(values.get(k)) == stats.fmt_value(stats._hashable(v)) for k, v in sel.items())


def choose_baseline(vs: list[stats.Variant], axes: list[str], baseline: str | None) -> tuple[stats.Variant, str]:
    """-> (the baseline variant, why it was chosen); see the module docstring."""
    if baseline:
        hits = [v for v in vs if v.label == baseline]
        if not hits and "=" in baseline:
            sel = parse_selection(baseline, axes)
            hits = [v for v in vs if _matches(v.values, sel)]
        if len(hits) != 1:
            from lmlab.config import did_you_mean

            raise UsageError(f"baseline={baseline} matches {len(hits)} variants"
                             f"{did_you_mean(baseline, [v.label for v in vs])}; variants: "
                             + ", ".join(repr(v.label) for v in vs))
        return hits[0], "baseline= given"
    defaults = {}
    for a in axes:
        try:
            defaults[a] = default_value(a)
        except (KeyError, OSError):
            pass
    if defaults:
        hits = [v for v in vs if _matches(v.values, defaults)]
        if hits:
            return hits[0], "the default config's choice"
    return vs[0], "first in sorted order"


def sort_variants(vs: list[stats.Variant], axes: list[str]) -> list[stats.Variant]:
    def key(v):
        return tuple((0, x) if isinstance(x, (int, float)) and not isinstance(x, bool) else (1, stats.fmt_value(x))
                     for x in (v.values[a] for a in axes))
    return sorted(vs, key=key)


# ---------------------------------------------------------------------------------------------
# x axes.
# ---------------------------------------------------------------------------------------------

_FLOPS_CACHE: dict[str, float | None] = {}


def flops_per_token(run: Run) -> float | None:
    """Training FLOPs per token: 3 x the forward matmuls of the run's model (built on the meta device)."""
    if run.summary.get("flops_per_token"):
        return 3.0 * float(run.summary["flops_per_token"])
    key = json.dumps([run.raw.get(k) for k in ("model", "attention", "pos")] + [run.summary.get("vocab_size")],
                     sort_keys=True, default=str)
    if key not in _FLOPS_CACHE:
        _FLOPS_CACHE[key] = _build_flops(run)
    return _FLOPS_CACHE[key]


def _build_flops(run: Run) -> float | None:
    import torch

    from lmlab.config import RunConfig, from_dict, load_variants
    from lmlab.model.transformer import build_model

    load_variants()
    problems: list[str] = []
    cfg = from_dict(RunConfig, run.raw, "", problems)
    if cfg is None or problems:
        return None
    vocab = int(run.summary.get("vocab_size") or cfg.tokenizer.vocab_size)
    try:
        with torch.device("meta"):
            model = build_model(cfg, vocab)
        return 3.0 * float(model.flops_per_token())
    except Exception:  # a config this lmlab cannot build: no FLOPs axis for that run
        return None


def _interp(x: np.ndarray, xp: list, fp: list) -> np.ndarray:
    """np.interp, but linear beyond the last point (the last validation often follows the last
    logged training step: step 200 after a log at 190 must not read 190's tokens)."""
    y = np.interp(x, xp, fp)
    if len(xp) >= 2 and xp[-1] > xp[-2]:
        slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y = np.where(x > xp[-1], fp[-1] + slope * (x - xp[-1]), y)
    return y


def x_values(run: Run, steps: list[int], x: str) -> np.ndarray | None:
    """The x coordinate of ``steps`` in ``run`` (see the module docstring); None when it cannot be told."""
    steps_a = np.asarray(steps, dtype=float)
    if x == "steps":
        return steps_a
    s = run.summary
    rows = [r for r in run.train if r["tokens"] is not None]
    if rows:
        tokens = _interp(steps_a, [r["step"] for r in rows], [r["tokens"] for r in rows])
    elif s.get("tokens_seen") and s.get("step"):
        tokens = steps_a * s["tokens_seen"] / s["step"]
    else:
        return None
    if x == "tokens":
        return tokens
    if x == "bytes":
        brows = [r for r in run.train if r["bytes"] is not None]
        if brows:
            return _interp(steps_a, [r["step"] for r in brows], [r["bytes"] for r in brows])
        bpt = s.get("train_bytes_per_token")
        return tokens * bpt if bpt else None
    if x == "flops":
        f = flops_per_token(run)
        return tokens * f if f else None
    if x == "time":
        trows = [r for r in rows if r["tps"]]
        if len(trows) >= 2:
            # each rate was measured since the previous logged step; the first also stands for the
            # steps before it (from 0 tokens at time 0)
            t, prev = [trows[0]["tokens"] / trows[0]["tps"]], trows[0]
            for r in trows[1:]:
                t.append(t[-1] + (r["tokens"] - prev["tokens"]) / r["tps"])
                prev = r
            return np.interp(tokens, [0.0] + [r["tokens"] for r in trows], [0.0] + t)
        if s.get("wall_time_s") and s.get("tokens_seen"):
            return tokens / s["tokens_seen"] * s["wall_time_s"]
        return None
    raise ValueError(f"x={x}")


# ---------------------------------------------------------------------------------------------
# Plots.
# ---------------------------------------------------------------------------------------------


def _mean_curve(runs: list[Run], points, x: str):
    """-> (x, mean, std or None, n) over seeds at each step logged by every run of the variant."""
    per_run = []
    for r in runs:
        pts = points(r)
        if not pts:
            continue
        steps = [p[0] for p in pts]
        xs = x_values(r, steps, x)
        if xs is None:
            continue
        per_run.append({st: (xv, y) for st, xv, (_, y) in zip(steps, xs, pts)})
    if not per_run:
        return None
    common = sorted(set.intersection(*(set(p) for p in per_run)))
    if not common:  # runs logged at different steps: the longest run alone
        common, per_run = sorted(max(per_run, key=len)), [max(per_run, key=len)]
    xs = np.array([[p[st][0] for st in common] for p in per_run]).mean(axis=0)
    ys = np.array([[p[st][1] for st in common] for p in per_run])
    std = ys.std(axis=0, ddof=1) if len(per_run) > 1 else None
    return xs, ys.mean(axis=0), std, len(per_run)


def _smooth(y: np.ndarray, n: int) -> np.ndarray:
    """Trailing moving average over n points (train loss is logged every few steps and is noisy)."""
    if n <= 1 or len(y) < 3:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    for i in range(len(y)):
        lo = max(0, i + 1 - n)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def plot_curves(groups: dict[str, list[Run]], path: Path, x: str = "steps") -> list[str]:
    """Train loss and val bits/byte against ``x``; -> the variants left out (no x for them)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    missing = []
    for i, (variant, rs) in enumerate(groups.items()):
        color = colors[i % len(colors)]
        drawn = False
        for ax, points, smooth in ((axes[0], lambda r: [(t["step"], t["loss"]) for t in r.train], True),
                                   (axes[1], lambda r: r.curve, False)):
            c = _mean_curve(rs, points, x)
            if c is None:
                continue
            xs, m, s, n = c
            k = max(1, len(m) // 25) if smooth else 1
            m = _smooth(m, k)
            lab = f"{variant} (n={n})"
            ax.plot(xs, m, color=color, marker="" if smooth and len(m) > 40 else ".", label=lab, lw=1.6)
            if s is not None:
                s = _smooth(s, k)
                ax.fill_between(xs, m - s, m + s, color=color, alpha=0.18 if len(groups) <= 4 else 0.08, lw=0)
            drawn = True
        if not drawn:
            missing.append(variant)
    xlabel = X_AXES[x]
    axes[0].set_ylabel("train loss (nats/token, moving average)")
    axes[0].set_title("train loss (mean over seeds; band = ± 1 std where n > 1)", fontsize=10)
    axes[1].set_ylabel("validation bits per byte")
    axes[1].set_title("validation bits/byte (mean over seeds; band = ± 1 std where n > 1)", fontsize=10)
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if x in ("tokens", "bytes", "flops"):
            ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    handles, labels = axes[1].get_legend_handles_labels()
    if not handles:
        handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.04 * ((len(labels) - 1) // 4 if handles else 0), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return missing


def _errs(ms):
    """Error bars only where there is a std (n > 1): NaN draws nothing."""
    return [s if s is not None and not math.isnan(s) else np.nan for _, s in ms]


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
                   yerr=_errs(ms), capsize=2,
                   label=f"{pv} / {kind}", hatch={"mid_token": "//", "mid_token_ref": ".."}.get(kind),
                   color=colors[pvars.index(pv) % len(colors)], alpha=1.0 if kind == "boundary" else 0.55)
        ax.set_ylabel(metric)
        ax.set_xticks(x)
        ax.set_xticklabels(variants, rotation=15, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("continuation: boundary vs mid-token cuts; ref = mid-token targets scored from the boundary\n"
                 "prompt; bars = mean over seeds, error bars = std over seeds where n > 1", fontsize=10)
    fig.tight_layout(rect=(0, 0.025 * (1 + (len(labels) - 1) // 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bytes_per_token(groups: dict[str, list[Run]], path: Path) -> None:
    import matplotlib.pyplot as plt

    variants = list(groups)
    x = np.arange(len(variants))
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * len(variants) + 3), 4.5))
    for i, (key, lab) in enumerate((("train_bytes_per_token", "train (as segmented in training)"),
                                    ("val_bytes_per_token", "validation (deterministic)"))):
        ms = [_ms([r.summary.get(key, float("nan")) for r in groups[v]]) for v in variants]
        ax.bar(x + (i - 0.5) * 0.38, [m for m, _ in ms], 0.38, label=lab, yerr=_errs(ms), capsize=2)
    ax.set_xticks(x)
    ax.set_xticklabels(variants, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("bytes per token")
    ax.set_title("bytes per token (error bars: std over seeds where n > 1)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Markdown.
# ---------------------------------------------------------------------------------------------


def _get(d: dict, *path, default=float("nan")):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _ms(vals: list) -> tuple[float, float]:
    v = np.array([x for x in vals if _float(x) is not None], dtype=float)
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def _pm(vals: list, digits: int = 3) -> str:
    m, s = _ms(vals)
    if math.isnan(m):
        return "—"
    return f"{m:.{digits}f}" + ("" if math.isnan(s) else f" ± {s:.{digits}f}")


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"{v:.{digits}f}"
    return str(v)


def probe_variants(runs: list[Run]) -> list[str]:
    names = {k for r in runs for k, v in r.probe.items() if isinstance(v, dict) and "gap" in v}
    return sorted(names, key=lambda n: (n != "plain", n))


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _dict_table(rows: list[dict], keep=()) -> list[str]:
    """A table of dict rows with the constant columns left out (``stats.drop_constant``)."""
    rows = stats.drop_constant(rows, keep) if len(rows) > 1 else rows
    if not rows or not rows[0]:
        return []
    head = list(rows[0])
    return _table(head, [[r.get(h, "—") for h in head] for r in rows])


def verdict(row: dict, lower_is_better: bool = True) -> str:
    if row["lo"] is None:
        return "no interval (< 2 shared seeds)" if row["pairs"] < 2 else "—"
    if not row["beyond_noise"]:
        return "within noise"
    better = (row["hi"] < 0) == lower_is_better
    return f"**{'better' if better else 'worse'}**, beyond noise"


def comparison_table(rows: list[dict], base_label: str, digits: int = 4) -> list[str]:
    out = []
    for r in rows:
        mean = "—" if r["mean"] is None else f"{r['mean']:.{digits}f}" + (
            "" if r["std"] is None else f" ± {r['std']:.{digits}f}")
        if r["variant"] == base_label:
            out.append([r["variant"], r["n"], mean, "baseline", "", ""])
            continue
        diff = "—" if r["diff"] is None else f"{round(r['diff'], digits) + 0.0:+.{digits}f}"  # no "-0.0000"
        ci = "" if r["lo"] is None else f"[{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}]"
        out.append([r["variant"], r["n"], mean, diff, ci, verdict(r)])
    return _table(["variant", "n", "val bits/byte", "Δ vs baseline", "95% interval", "verdict"], out)


MAX_SLICES = 6  # pivot tables per pair of axes, one per combination of the other axes


def pivot_tables(done: list[Run], axes: list[str]) -> list[str]:
    """A table of val bits/byte for every pair of axes; when other axes vary too, one table per
    combination of their values (at most MAX_SLICES, else a pointer to ``where=``)."""
    md = []
    short = stats._short_keys(axes)
    for i, a in enumerate(axes):
        for b in axes[i + 1:]:
            rest = [c for c in axes if c not in (a, b)]
            combos = list(dict.fromkeys(tuple(stats._value(r, c) for c in rest) for r in done))
            if len(combos) > MAX_SLICES:
                md += [f"*{short[a]} × {short[b]}: not tabulated: {len(combos)} combinations of "
                       f"{', '.join(short[c] for c in rest)}; select one with `where=key=value`.*", ""]
                continue
            for combo in combos:
                where = dict(zip(rest, combo))
                try:
                    p = stats.pivot(done, a, b, "val_bpb", where=where)
                except ValueError as e:
                    md += [f"*{short[a]} × {short[b]}: not tabulated: {e}.*", ""]
                    continue
                title = f"### val bits/byte: {short[a]} × {short[b]}"
                if where:
                    title += " (" + ", ".join(f"{short[c]}={stats.fmt_value(v)}" for c, v in where.items()) + ")"
                md += [title, "", "Mean over seeds (n in parentheses); lower is better.", ""]
                rows = [[r] + ["—" if m is None else f"{m:.4f} ({n})" for m, n in zip(p.mean[k], p.n[k])]
                        for k, r in enumerate(p.rows)]
                md += _table([f"{short[a]} \\ {short[b]}"] + p.cols, rows) + [""]
    return md


def _stat_cell(r: dict, digits: int = 3) -> tuple[str, str]:
    """(mean ± std, Δ [interval] with * when beyond noise) of one ``stats.summary_rows`` row."""
    mean = "—" if r["mean"] is None else f"{r['mean']:.{digits}f}" + (
        "" if r["std"] is None else f" ± {r['std']:.{digits}f}")
    if r["diff"] is None:
        return mean, "—"
    diff = f"{round(r['diff'], digits) + 0.0:+.{digits}f}"
    if r["lo"] is None:
        return mean, diff
    return mean, diff + f" [{r['lo']:+.{digits}f}, {r['hi']:+.{digits}f}]" + (" *" if r["beyond_noise"] else "")


# (summary key under probe/<variant>/, column) for the seed-statistics tables of the probe
PROBE_STATS = (("boundary/p_char", "p_char bnd"), ("mid_token/p_char", "p_char mid"),
               ("mid_token_ref/p_char", "p_char ref"), ("gap_matched/p_char", "gap_m p_char"),
               ("mid_token/p_word", "p_word mid"), ("mid_token_ref/p_word", "p_word ref"),
               ("mid_token/greedy_word", "greedy_word mid"))


def probe_stat_tables(done: list[Run], axes: list[str], base_label: str, pvars: list[str],
                      order: Optional[list[str]] = None) -> list[str]:
    """Per probe variant: each metric's mean ± std over seeds and its paired difference from the
    baseline variant (same seed) with the bootstrap 95% interval; then healing's effect within each
    run (heal_kN − plain, paired by run)."""
    def value(r: Run, pv: str, key: str) -> float | None:  # from probe.json (also there for `lmlab probe`)
        v = _float(_get(r.probe, pv, *key.split("/")))
        return v if v is not None and math.isfinite(v) else None

    rank = {v: i for i, v in enumerate(order or [])}  # the report's variant order (baseline first)
    md = []
    for pv in pvars:
        cols, cells = [], {}
        for key, col in PROBE_STATS:
            pseudo = [{"config": r.config, "summary": {"m": value(r, pv, key)}} for r in done]
            if all(p["summary"]["m"] is None for p in pseudo):
                continue
            cols.append(col)
            for row in stats.summary_rows(pseudo, "m", base_label, axes=axes):
                cells.setdefault(row["variant"], {"n": row["n"]})[col] = _stat_cell(row)
        if not cols:
            continue
        cells = dict(sorted(cells.items(), key=lambda kv: rank.get(kv[0], len(rank))))
        md += [f"#### {pv}: mean ± std over seeds, and Δ vs {base_label} [95% interval]", ""]
        for part in (cols[:4], cols[4:]):
            if not part:
                continue
            md += _table(["variant", "n"] + [h for c in part for h in (c, f"Δ {c}")],
                         [[v, c["n"]] + [x for col in part for x in c.get(col, ("—", "—"))] for v, c in cells.items()])
            md += [""]
    heals = [pv for pv in pvars if pv != "plain"]
    if "plain" in pvars and heals:
        keys = (("mid_token/p_char", "p_char mid"), ("boundary/p_char", "p_char bnd"),
                ("gap_matched/p_char", "gap_m p_char"), ("mid_token/greedy_word", "greedy_word mid"))
        rows = []
        for pv in heals:
            per: dict[str, dict[str, list[float]]] = {}
            for r in done:
                lab = r.variant
                for key, col in keys:
                    a, b = value(r, pv, key), value(r, "plain", key)
                    if a is not None and b is not None:
                        per.setdefault(lab, {}).setdefault(col, []).append(a - b)
            for lab, d in sorted(per.items(), key=lambda kv: rank.get(kv[0], len(rank))):
                row = [f"{lab} ({pv})"]
                for _, col in keys:
                    v = d.get(col, [])
                    ci = stats.paired_bootstrap(v)
                    row.append("—" if not v else f"{np.mean(v):+.3f}" + (
                        "" if ci is None else f" [{ci[0]:+.3f}, {ci[1]:+.3f}]"
                        + (" *" if ci[0] > 0 or ci[1] < 0 else "")))
                rows.append(row)
        md += ["#### Healing's effect: healed − plain on the same run, mean over seeds [95% interval]", ""]
        md += _table(["variant (healing)"] + [f"Δ {c}" for _, c in keys], rows) + [""]
    md += ["Intervals: percentile bootstrap of the mean paired difference over seeds (10,000 resamples); "
           "* = the interval excludes 0 (beyond seed noise, for these seeds and these prompts: every run "
           "is probed on the same prompts, so prompt sampling noise is shared, not averaged out).", ""]
    return md


def equal_x_table(done: list[Run], axes: list[str], base_label: str, x: str, at: float | None = None
                  ) -> tuple[list[str], float | None]:
    """Validation bits/byte read off each run's curve at one x (``at``, default the largest x every
    run reaches), by linear interpolation between validations; paired comparison as for the final
    values. Runs whose curve does not span ``at`` get no value. -> (markdown, the x used)."""
    curves = {}
    for r in done:
        if not r.curve:
            continue
        steps = [s for s, _ in r.curve]
        xs = x_values(r, steps, x)
        if xs is not None:
            curves[r.name] = (np.asarray(xs, float), np.asarray([v for _, v in r.curve], float), steps)
    if not curves:
        return [], None
    if at is None:
        at = min(xs[-1] for xs, _, _ in curves.values())
    pseudo = []
    for r in done:
        c = curves.get(r.name)
        summ = {}
        if c is not None and c[0][0] <= at <= c[0][-1]:
            summ = {"val_bpb": float(np.interp(at, c[0], c[1])),
                    "step_at": float(np.interp(at, c[0], np.asarray(c[2], float)))}
        pseudo.append({"config": r.config, "summary": summ})
    rows = stats.summary_rows(pseudo, "val_bpb", base_label, axes=axes)
    steps_at = {}
    for p, r in zip(pseudo, done):
        if "step_at" in p["summary"]:
            steps_at.setdefault(r.variant, []).append(p["summary"]["step_at"])
    md = comparison_table(rows, base_label)
    md[0] += " step there |"
    md[1] += "---|"
    for i, row in enumerate(rows):
        st = steps_at.get(row["variant"])
        md[2 + i] += f" {np.mean(st):.0f} |" if st else " — |"
    return md, at


def build_report(sweep_dirs, out: str | Path | None = None, baseline: str | None = None, x: str = "steps",
                 where: str | dict | None = None, log=print, at: float | None = None) -> Path:
    """One report over one sweep directory, or over several (then ``out`` is required and run
    names are prefixed with their sweep directory's name); -> the report.md path."""
    import matplotlib

    matplotlib.use("Agg")
    if x not in X_AXES:
        from lmlab.config import did_you_mean

        raise UsageError(f"x={x}: not an x axis{did_you_mean(x, X_AXES)} (one of {', '.join(X_AXES)})")
    dirs = [Path(d) for d in ([sweep_dirs] if isinstance(sweep_dirs, (str, Path)) else sweep_dirs)]
    if len(dirs) > 1 and out is None:
        raise UsageError("several sweep directories need out=DIR")
    out = Path(out) if out else dirs[0] / "report"
    runs = []
    for d in dirs:
        for r in load_runs(d):
            r.name = f"{d.name}/{r.name}" if len(dirs) > 1 else r.name
            runs.append(r)
    title = dirs[0].name if len(dirs) == 1 else " + ".join(d.name for d in dirs)
    if not runs:
        raise UsageError(f"no run directories (config.yaml) under {', '.join(map(str, dirs))}")
    if where:
        sel = where if isinstance(where, dict) else parse_selection(where, find_axes(runs))
        runs = [r for r in runs if _matches({k: stats._value(r, k) for k in sel}, sel)]
        if not runs:
            raise UsageError(f"where={where}: no run matches")
    out.mkdir(parents=True, exist_ok=True)
    axes = find_axes(runs)
    done = [r for r in runs if r.status == "ok"]
    if not done:
        raise UsageError(f"no complete run (summary.json) under {', '.join(map(str, dirs))}")
    try:
        vs = stats.variants(done, "val_bpb", axes)
    except ValueError as e:
        raise UsageError(str(e)) from None
    vs = sort_variants(vs, axes)
    base, why = choose_baseline(vs, axes, baseline)
    vs = [base] + [v for v in vs if v is not base]
    for v in vs:
        for r in v.runs:
            r.variant = v.label
    for r in runs:
        if r.status != "ok":
            r.variant = stats.label({a: stats._value(r, a) for a in axes}, axes)
    groups = {v.label: v.runs for v in vs}
    rows = stats.summary_rows(done, "val_bpb", base.label)
    order = {v.label: i for i, v in enumerate(vs)}
    rows.sort(key=lambda r: order[r["variant"]])
    pvars = probe_variants(done)
    seeds = sorted({stats.fmt_value(stats._value(r, stats.SEED)) for r in done})

    files = ["curves.png"]
    missing = plot_curves(groups, out / "curves.png", x)
    tokenizer_swept = any(a.startswith("tokenizer.") for a in axes)
    if tokenizer_swept:
        plot_bytes_per_token(groups, out / "bytes_per_token.png")
        files.append("bytes_per_token.png")
    if pvars:
        plot_continuation(groups, pvars, out / "continuation.png")
        files.append("continuation.png")
    sparse = [r.name for r in done if len(r.curve) < MIN_VALIDATIONS]

    short_axes = ", ".join(f"`{a}`" for a in axes) or "none"
    md = [f"# Sweep report: {title}", "",
          f"{len(runs)} runs ({len(done)} complete, {sum(r.status == 'failed' for r in runs)} failed, "
          f"{sum(r.status == 'incomplete' for r in runs)} incomplete) in {len(vs)} variant"
          f"{'s' if len(vs) != 1 else ''}; seeds {', '.join(seeds)}."
          + (f" Selected: where={where}." if where else ""),
          f"Swept axes: {short_axes} (config keys that differ across runs, seeds aside; keys implied by "
          "another axis and run bookkeeping left out).",
          f"Baseline: **{base.label}** ({why}; choose with `baseline=`).", ""]
    if sparse:
        md += [f"**Warning**: {len(sparse)} run(s) validated fewer than {MIN_VALIDATIONS} times "
               f"({', '.join(sparse[:5])}{', …' if len(sparse) > 5 else ''}): their curves have too few "
               "points. Use `trainer.val_every` <= `trainer.max_steps` / 5.", ""]
        log(f"warning: {len(sparse)} run(s) have fewer than {MIN_VALIDATIONS} validations; "
            "use trainer.val_every <= trainer.max_steps / 5 for curves with points")
    md += ["## Which variant is better?", "",
           "Final validation bits/byte (lower is better): mean ± sample std over seeds (no ± for n = 1). "
           "Δ = variant − baseline, paired on the seeds both ran (shared seed noise cancels), with a "
           "bootstrap 95% interval of the mean paired difference (10,000 resamples). *Beyond noise*: the "
           "interval excludes 0; *within noise*: it contains 0 -- no evidence of a difference at these "
           "seeds. Fewer than 2 shared seeds: no interval.", ""]
    md += comparison_table(rows, base.label) + [""]
    if len(axes) >= 2:
        md += ["## Pivot tables", ""] + pivot_tables(done, axes)
    if x != "steps":
        table, at_x = equal_x_table(done, axes, base.label, x, at)
        if table:
            md += [f"## At equal {X_AXES[x]}", "",
                   f"Validation bits/byte at {X_AXES[x]} = {at_x:,.6g} ({'`at=`' if at is not None else 'the largest value every run reaches; choose with `at=`'}), "
                   "read off each run's validation curve by linear interpolation between validations "
                   "(a run part-way through its learning-rate schedule there is not a run trained for that "
                   "long); paired comparison as above. `step there` = mean step at which the variant reaches it; "
                   "— = the run's curve does not span it.", ""]
            md += table + [""]
    md += ["## Curves", "", "![curves](curves.png)", "",
           f"x = {X_AXES[x]} (`x=` steps, tokens, bytes, time, flops). One line per variant: the mean over "
           "seeds at each logged step; band = ± 1 std over seeds where n > 1; train loss smoothed by a "
           "short moving average." + (f" Not drawn (no {x} data): {', '.join(missing)}." if missing else ""),
           ""]
    # a metric equal in every run says nothing about the variants: left out (judged on the runs' values,
    # not on the formatted cells, which differ by "± std" between n = 1 and n > 1)
    metrics = [(col, key, dg) for col, key, dg in OTHER_METRICS
               if len({repr(r.summary.get(key)) for r in done}) > 1]
    if metrics:
        other = [[v.label, len(v.runs)] + [_pm([r.summary.get(key) for r in v.runs], dg) for _, key, dg in metrics]
                 for v in vs]
        md += ["## Other metrics per variant", "",
               "Mean ± std over seeds; metrics equal in every run left out.", ""]
        md += _table(["variant", "n"] + [col for col, _, _ in metrics], other) + [""]
    if tokenizer_swept:
        md += ["![bytes per token](bytes_per_token.png)", ""]
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
        md += ["### Seed statistics", ""] + probe_stat_tables(done, axes, base.label, pvars, [v.label for v in vs])
    md += ["## Every run", "", "Columns equal for every run left out.", ""]
    every = []
    for r in runs:
        s = r.summary
        row = {"run": r.name, "status": r.status, "variant": r.variant,
               "seed": stats.fmt_value(stats._value(r, stats.SEED))}
        row.update({"step": s.get("step", "—"), "val bits/byte": _num(s.get("val_bpb"), 4),
                    "validations": len(r.curve), "bytes/tok train": _num(s.get("train_bytes_per_token")),
                    "bytes/tok val": _num(s.get("val_bytes_per_token")), "tokens/s": _num(s.get("tokens_per_sec"), 0)})
        for pv in pvars:
            for m in ("p_char", "greedy_word"):
                row[f"{m} mid ({pv})"] = _num(_get(r.probe, pv, "mid_token", m, default=None))
        every.append(row)
    md += _dict_table(every, keep=("run", "status", "val bits/byte"))
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


USAGE = ("python -m lmlab report DIR [DIR ...] [baseline=LABEL|key=value,...] [x=steps|tokens|bytes|time|flops] "
         "[where=key=value,...] [at=X] [out=DIR]")


@dataclass
class Args:
    out: Optional[str] = arg(None, "output directory (default: DIR/report; required for several directories)")
    baseline: Optional[str] = arg(None, "baseline variant: a label as printed, or key=value[,key=value] "
                                        "(default: the default config's choice, else the first variant)")
    x: str = arg("steps", "x axis of the curves: steps, tokens, bytes, time or flops")
    where: Optional[str] = arg(None, "select runs first: key=value[,key=value] over the swept axes")
    at: Optional[float] = arg(None, "with x other than steps: the x at which to compare val bits/byte "
                                    "(default: the largest x every run reaches)")


def has_image_text_runs(d: Path) -> bool:
    return any(json.loads(p.read_text()).get("task") == "image_text" for p in Path(d).rglob("summary.json"))


def report(dirs, out=None, baseline: str | None = None, x: str = "steps", where: str | dict | None = None,
           log=print, at: float | None = None) -> list[Path]:
    """Both reports over ``dirs`` (what ``main`` runs): -> the report.md paths written."""
    dirs = [Path(d) for d in ([dirs] if isinstance(dirs, (str, Path)) else dirs)]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise UsageError(f"not a directory: {', '.join(missing)}")
    paths = []
    digits = [d for d in dirs if has_image_text_runs(d)]
    if digits:
        from lmlab.multimodal.report import build_report as build_digits_report

        paths.append(build_digits_report(digits, out, log=log))
    lm = [d for d in dirs if load_runs(d)]
    if lm or not digits:
        path = build_report(lm or dirs, out if not digits else Path(out or lm[0]) / "report",
                            baseline=baseline, x=x, where=where, log=log, at=at)
        log(f"wrote {path} and its plots")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = parse("report", Args, sys.argv[1:] if argv is None else argv, positional=True)
    if not p.positional:
        raise UsageError(f"report needs at least one run directory: {USAGE}")
    a = p.args
    report(p.positional, a.out, a.baseline, a.x, a.where, at=a.at)
    return 0
