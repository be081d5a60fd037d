"""Statistics for comparing runs: which variant is better, and is the difference real?

Input: a list of runs, each a mapping ``{"config": {flat keys}, "summary": {...}}`` or an object with
``.config`` and ``.summary`` (``lmlab.cli.report.Run``). Flat config keys read ``attention.name``,
``optim.lr``; the replicate key is ``seed``.

- ``swept_axes``: config keys whose values differ across runs, minus ``seed`` and the run-identity
  keys (``IDENTITY``: the patterns kept out of run names in conf/config.yaml, plus bookkeeping).
  A key implied by another axis is left out: ``attention.kv_lora_rank`` only varies because
  ``attention.name`` does (a key absent from a run counts as the value ``None``).
- ``variants``: runs grouped by the axes; per variant the metric's mean, sample std (ddof=1; None
  for n = 1) and n over seeds.
- ``compare``: each variant's difference from a baseline variant, *paired by seed* (variant minus
  baseline on the same seed, so seed-to-seed noise shared by both cancels), with a percentile
  bootstrap 95% interval over the paired differences (seeded: the same inputs give the same
  interval). Fewer than two pairs: no interval (``lo = hi = None``) -- one pair says nothing about
  seed noise. An interval that excludes 0 is a difference beyond seed noise *for these seeds*; the
  bootstrap is approximate for small n (it cannot be wider than the observed spread).
- ``pivot``: mean of the metric over seeds in a table of two axes (rows x columns).
- ``label``: the swept choices only (``mla / rope2d``); ``name`` keys show their value, other keys
  ``lr=0.003``.
- ``drop_constant``: table columns with one value in every row are left out.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Keys that cannot change results (conf/config.yaml exclude_keys) and run bookkeeping
IDENTITY = (
    "run_name", "run_dir", "sweep_name", "out_dir", "cache_dir", "resume", "extra",
    "trainer.progress_bar", "trainer.num_threads", "trainer.log_every", "trainer.keep_last",
    "trainer.entropy_baseline", "trainer.compile", "trainer.compile_backend", "logger", "logger.*",
)
SEED = "seed"
MISSING = None


def _config(run) -> dict:
    return run["config"] if isinstance(run, dict) else run.config


def _summary(run) -> dict:
    return run.get("summary", {}) if isinstance(run, dict) else run.summary


def _hashable(v: Any) -> Any:
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    return v


def _value(run, key: str) -> Any:
    return _hashable(_config(run).get(key, MISSING))


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in ignore)


def _is_function_of(runs, key: str, of: str) -> bool:
    seen: dict = {}
    for r in runs:
        a, b = _value(r, of), _value(r, key)
        if seen.setdefault(a, b) != b:
            return False
    return True


def _priority(key: str) -> int:
    """Choices a user makes (group names, experiment variants) before the keys they imply."""
    return 0 if key.endswith(".name") or key.startswith("experiment.") else 1


def swept_axes(runs: Sequence, ignore: Iterable[str] = IDENTITY, seed_key: str = SEED) -> list[str]:
    """Config keys that vary across ``runs`` (see the module docstring), user choices first."""
    ignore = tuple(ignore)
    keys = sorted({k for r in runs for k in _config(r)} - {seed_key})
    varying = [k for k in keys if not _ignored(k, ignore) and len({_value(r, k) for r in runs}) > 1]
    varying.sort(key=lambda k: (_priority(k), k))
    kept: list[str] = []
    for k in varying:
        implied = False
        for a in kept:
            if not _is_function_of(runs, k, a):
                continue
            one_to_one = _is_function_of(runs, a, k)
            # k carries nothing a kept axis does not: coarser than it, or the same split named by a
            # key of lower priority (attention.kv_lora_rank beside attention.name)
            if not one_to_one or _priority(a) < _priority(k):
                implied = True
                break
        if not implied:
            kept.append(k)
    return kept


def _short_keys(axes: Sequence[str]) -> dict[str, str]:
    """``optim.lr`` -> ``lr`` unless another axis shares the last component; ``x.name`` -> ``x``."""
    def last(k: str) -> str:
        parts = k.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    counts: dict[str, int] = {}
    for a in axes:
        counts[last(a)] = counts.get(last(a), 0) + 1
    return {a: last(a) if counts[last(a)] == 1 else a for a in axes}


def fmt_value(v: Any) -> str:
    if v is MISSING:
        return "-"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, tuple):
        return "[" + ",".join(fmt_value(x) for x in v) + "]"
    return str(v)


def label(values: dict[str, Any], axes: Sequence[str] | None = None) -> str:
    """``{"attention.name": "mla", "pos.name": "rope2d", "optim.lr": 0.003}`` -> ``mla / rope2d / lr=0.003``."""
    axes = list(values) if axes is None else list(axes)
    short = _short_keys(axes)
    parts = []
    for a in axes:
        v = fmt_value(values.get(a, MISSING))
        parts.append(v if a.endswith(".name") or a.startswith("experiment.") else f"{short[a]}={v}")
    return " / ".join(parts) or "all runs"


@dataclass
class Variant:
    values: dict[str, Any]  # axis -> value
    label: str
    by_seed: dict[Any, float] = field(default_factory=dict)  # seed -> metric (finite values only)
    runs: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.by_seed)

    @property
    def mean(self) -> float | None:
        return float(np.mean(list(self.by_seed.values()))) if self.by_seed else None

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None for n < 2 (no error bar from one run)."""
        return float(np.std(list(self.by_seed.values()), ddof=1)) if self.n >= 2 else None


def _metric(run, metric: str) -> float | None:
    v = _summary(run).get(metric)
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def variants(runs: Sequence, metric: str = "val_bpb", axes: Sequence[str] | None = None,
             seed_key: str = SEED) -> list[Variant]:
    """Runs grouped by ``axes`` (default ``swept_axes``), in first-seen order of the axis values.

    Two runs of one variant with the same seed (a repeated run) raise ValueError naming both:
    their replicate would be counted twice.
    """
    axes = swept_axes(runs, seed_key=seed_key) if axes is None else list(axes)
    groups: dict[tuple, Variant] = {}
    for r in runs:
        key = tuple(_value(r, a) for a in axes)
        v = groups.get(key)
        if v is None:
            vals = dict(zip(axes, key))
            v = groups[key] = Variant(vals, label(vals, axes))
        v.runs.append(r)
        m = _metric(r, metric)
        if m is None:
            continue
        seed = _value(r, seed_key)
        if seed in v.by_seed:
            raise ValueError(f"variant '{v.label}' has two runs with {seed_key}={seed}; remove one "
                             "(or add the key that tells them apart to the axes)")
        v.by_seed[seed] = m
    return list(groups.values())


@dataclass
class Difference:
    label: str
    baseline: str
    mean: float | None  # mean over paired seeds of (variant - baseline); None without pairs
    lo: float | None  # bootstrap 95% interval; None when fewer than 2 pairs
    hi: float | None
    n_pairs: int

    @property
    def significant(self) -> bool:
        """The interval excludes 0 (a difference beyond the seed noise of these seeds)."""
        return self.lo is not None and (self.lo > 0 or self.hi < 0)


def paired_bootstrap(diffs: Sequence[float], n_resamples: int = 10_000, level: float = 0.95,
                     seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of paired differences; None for fewer than 2."""
    d = np.asarray(diffs, dtype=np.float64)
    if d.size < 2:
        return None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.size, size=(n_resamples, d.size))
    means = d[idx].mean(axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def compare(runs_or_variants: Sequence, baseline: str | dict | None = None, metric: str = "val_bpb",
            n_resamples: int = 10_000, level: float = 0.95, seed: int = 0) -> list[Difference]:
    """Each variant minus ``baseline`` (a label, a ``{axis: value}`` subset, or None: the first
    variant), paired on the seeds both ran; the baseline itself is left out."""
    vs = runs_or_variants
    if not vs or not isinstance(vs[0], Variant):
        vs = variants(vs, metric)
    base = _find(vs, baseline)
    out = []
    for v in vs:
        if v is base:
            continue
        common = [s for s in v.by_seed if s in base.by_seed]
        d = [v.by_seed[s] - base.by_seed[s] for s in common]
        ci = paired_bootstrap(d, n_resamples, level, seed)
        out.append(Difference(v.label, base.label, float(np.mean(d)) if d else None,
                              ci[0] if ci else None, ci[1] if ci else None, len(d)))
    return out


def _find(vs: Sequence[Variant], baseline) -> Variant:
    if baseline is None:
        return vs[0]
    if isinstance(baseline, dict):
        hits = [v for v in vs if all(fmt_value(v.values.get(k)) == fmt_value(_hashable(x))
                                     for k, x in baseline.items())]
    else:
        hits = [v for v in vs if v.label == baseline]
    if len(hits) != 1:
        labels = ", ".join(repr(v.label) for v in vs)
        raise ValueError(f"baseline {baseline!r} matches {len(hits)} variants; variants: {labels}")
    return hits[0]


@dataclass
class Pivot:
    row_axis: str
    col_axis: str
    rows: list[str]
    cols: list[str]
    mean: list[list[float | None]]  # [row][col]; None where no run
    n: list[list[int]]


def pivot(runs: Sequence, row_axis: str, col_axis: str, metric: str = "val_bpb",
          where: dict | None = None, seed_key: str = SEED) -> Pivot:
    """Mean of ``metric`` over seeds for each (row value, column value).

    ``where`` ({axis: value}) selects runs first. Any other swept axis must be constant in what is
    left, else ValueError naming it: averaging over it would mix variants silently.
    """
    sel = [r for r in runs if all(fmt_value(_value(r, k)) == fmt_value(_hashable(v))
                                  for k, v in (where or {}).items())]
    if not sel:
        raise ValueError(f"no runs match {where}")
    others = [a for a in swept_axes(sel, seed_key=seed_key)
              if a not in (row_axis, col_axis) and not _is_function_of(sel, a, row_axis)
              and not _is_function_of(sel, a, col_axis)]
    if others:
        raise ValueError(f"pivot of {row_axis} x {col_axis}: {', '.join(others)} also varies; "
                         f"select one value with where={{...}}")
    rows = list(dict.fromkeys(_value(r, row_axis) for r in sel))
    cols = list(dict.fromkeys(_value(r, col_axis) for r in sel))
    vs = variants(sel, metric, axes=[row_axis, col_axis], seed_key=seed_key)
    cell = {(v.values[row_axis], v.values[col_axis]): v for v in vs}
    return Pivot(
        row_axis, col_axis, [fmt_value(x) for x in rows], [fmt_value(x) for x in cols],
        [[cell[(a, b)].mean if (a, b) in cell else None for b in cols] for a in rows],
        [[cell[(a, b)].n if (a, b) in cell else 0 for b in cols] for a in rows],
    )


def drop_constant(rows: list[dict], keep: Iterable[str] = ()) -> list[dict]:
    """The rows without the columns that hold one value in every row (``keep`` are always kept)."""
    keep = set(keep)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    vary = [c for c in cols if c in keep or len({repr(r.get(c)) for r in rows}) > 1]
    return [{c: r.get(c) for c in vary} for r in rows]


def summary_rows(runs: Sequence, metric: str = "val_bpb", baseline: str | dict | None = None,
                 n_resamples: int = 10_000, seed: int = 0, axes: Sequence[str] | None = None) -> list[dict]:
    """One row per variant for a report table: ``variant``, ``n``, ``mean``, ``std`` (None for
    n = 1), and against the baseline ``diff`` (paired mean), ``lo``/``hi`` (95% interval, None
    below two pairs), ``pairs`` and ``beyond_noise`` (the interval excludes 0); the baseline row
    has ``diff = 0.0`` and no interval. ``axes``: as for ``variants`` (default ``swept_axes``)."""
    vs = variants(runs, metric, axes)
    base = _find(vs, baseline)
    diffs = {d.label: d for d in compare(vs, base.label, metric, n_resamples, seed=seed)}
    rows = []
    for v in vs:
        d = diffs.get(v.label)
        rows.append({
            "variant": v.label, "n": v.n, "mean": v.mean, "std": v.std,
            "diff": 0.0 if v is base else d.mean, "lo": d.lo if d else None, "hi": d.hi if d else None,
            "pairs": v.n if v is base else d.n_pairs, "beyond_noise": bool(d and d.significant),
        })
    return rows
