"""Continuation probe (SPEC §5): ``python -m lmlab probe ckpt=PATH [heal=true] [k=1] [KEY=VALUE ...]``.

- ``ckpt=PATH``: a checkpoint, or a run directory (its ``checkpoints/last.ckpt``). The model, its
  tokenizer and its config come from the checkpoint (``lmlab.cli.load_checkpoint``); the prompts from
  the run's held-out split (``lmlab.data.corpus.load_corpus``: same documents as the run's validation).
- ``sweep=DIR``: probe every run directory under DIR that has ``checkpoints/last.ckpt`` and no
  ``probe.json`` yet (``force=true`` re-probes). This is how a sweep is probed after the fact when
  the training runs did not probe themselves.
- ``heal=true k=1`` (the default): besides the plain metrics, report them with token healing backing
  off k tokens (``heal=false``: plain only; ``heal_k=[1,2]``: several). Every other key is a
  ``ProbeConfig`` field (``n_prompts=200``, ``context_tokens=64``, ``min_prob=1e-4``, ...), see
  ``lmlab.eval.probe``.
- ``out=PATH``: where the JSON goes; default ``probe.json`` in the run directory when the checkpoint
  sits in ``<run_dir>/checkpoints/``, else beside the checkpoint. ``threads=N`` torch threads.

It prints boundary, mid-token and gap for every metric and variant, and writes the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from pathlib import Path
from typing import Optional

from lmlab.cli import ArgumentError, UsageError, arg, load_checkpoint, parse, resolve_ckpt
from lmlab.config import ProbeConfig
from lmlab.eval.probe import METRICS, run_probe


@dataclasses.dataclass
class _Keys:
    ckpt: Optional[str] = arg(None, "checkpoint file or run directory (or give sweep=)")
    sweep: Optional[str] = arg(None, "probe every run directory under this one")
    heal: bool = arg(True, "also probe with token healing")
    k: int = arg(1, "tokens healing backs off")
    heal_k: Optional[list[int]] = arg(None, "several healing variants, e.g. [1,2] (overrides heal/k)")
    out: Optional[str] = arg(None, "output JSON (default: probe.json in the run directory)")
    threads: Optional[int] = arg(None, "torch threads")
    force: bool = arg(False, "with sweep=: re-probe runs that have a probe.json")


# Args = the command's own keys, then every ProbeConfig setting (one definition of each default)
_OWN = {f.name for f in dataclasses.fields(_Keys)} | {"enabled"}
Args = dataclasses.make_dataclass(
    "Args",
    [(f.name, typing.get_type_hints(ProbeConfig)[f.name], arg(f.default if f.default is not dataclasses.MISSING else None,
                          f"ProbeConfig.{f.name} (lmlab.config)",
                          factory=f.default_factory if f.default_factory is not dataclasses.MISSING else None))
     for f in dataclasses.fields(ProbeConfig) if f.name not in _OWN],
    bases=(_Keys,),
)


def parse_args(argv: list[str]):
    """-> (Args, the ProbeConfig it sets); ArgumentError lists every problem."""
    a = parse("probe", Args, argv).args
    settings = {f.name: getattr(a, f.name) for f in dataclasses.fields(ProbeConfig) if f.name not in _OWN}
    cfg = ProbeConfig(**settings)
    cfg.heal_k = list(a.heal_k) if a.heal_k is not None else ([a.k] if a.heal else [])
    problems = dataclasses.replace(cfg, enabled=True).check(None)
    if not a.ckpt and not a.sweep:
        problems.append("ckpt: required (a checkpoint or run directory), or sweep=DIR")
    if problems:
        raise ArgumentError("probe", problems)
    return a, cfg


def resolve_out(ckpt: Path) -> Path:
    """Where probe.json goes: the run directory when the checkpoint sits in <run_dir>/checkpoints/."""
    return (ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent) / "probe.json"


def probe_checkpoint(ckpt: Path, cfg: ProbeConfig, out: Path, log=print) -> dict:
    from lmlab.data.corpus import load_corpus

    model, tokenizer, run = load_checkpoint(ckpt, log)
    problems = dataclasses.replace(cfg, enabled=True).check(run)
    if problems:
        raise ArgumentError("probe", [f"for this model ({ckpt}): {p}" for p in problems])
    val = load_corpus(run).val["text"]
    res = run_probe(model, tokenizer, val, cfg)
    res["checkpoint"] = str(ckpt)
    res["tokenizer"] = tokenizer.describe()
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1, default=float))
    os.replace(tmp, out)
    log(format_result(res))
    log(f"wrote {out}")
    return res


def format_result(res: dict) -> str:
    lines = [f"{res.get('n_pairs', 0)} matched prompt pairs; {res.get('model_rows', 0)} model rows; "
             f"{res.get('wall_time_s', 0):.1f} s"]
    head = (f"{'variant':<9} {'metric':<19} {'boundary':>9} {'mid_token':>9} {'gap':>9} "
            f"{'mid_ref':>9} {'gap_match':>9}")
    lines += [head, "-" * len(head)]
    for name, v in res.items():
        if not (isinstance(v, dict) and "gap" in v):
            continue
        for m in METRICS:
            ref, gm = v["mid_token_ref"][m], v["gap_matched"].get(m, float("nan"))
            tail = "" if ref != ref else f" {ref:>9.4f} {gm:>+9.4f}"  # greedy: no reference
            lines.append(f"{name:<9} {m:<19} {v['boundary'][m]:>9.4f} {v['mid_token'][m]:>9.4f} "
                         f"{v['gap'][m]:>+9.4f}{tail}")
        lines.append(f"{name:<9} {'search bound':<19} dropped mass ≤ "
                     f"{max(v[k]['dropped_max'] for k in ('boundary', 'mid_token')):.2e} per query")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import torch

    a, cfg = parse_args(sys.argv[1:] if argv is None else argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.sweep:
        runs = sorted(p.parent.parent for p in Path(a.sweep).rglob("checkpoints/last.ckpt"))
        if not runs:
            raise UsageError(f"no run directory with checkpoints/last.ckpt under {a.sweep}")
        for rd in runs:
            if (rd / "probe.json").exists() and not a.force:
                print(f"skip {rd} (probe.json exists; force=true to redo)")
                continue
            print(f"== {rd}")
            probe_checkpoint(rd / "checkpoints" / "last.ckpt", cfg, rd / "probe.json")
        return 0
    ckpt = resolve_ckpt(a.ckpt)
    probe_checkpoint(ckpt, cfg, Path(a.out) if a.out else resolve_out(ckpt))
    return 0
