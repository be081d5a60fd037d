"""Continuation probe CLI (SPEC §5): ``python -m lmlab.probe ckpt=PATH [heal=true] [k=1] [KEY=VALUE ...]``.

- ``ckpt=PATH``: a checkpoint, or a run directory (its ``checkpoints/last.ckpt``). The model, its
  tokenizer and its config come from the checkpoint (``lmlab.train.checkpoint.load_checkpoint``); the
  prompts from the run's held-out split (``lmlab.data.corpus.load_corpus``: same documents as the
  run's validation).
- ``sweep=DIR``: probe every run directory under DIR that has ``checkpoints/last.ckpt`` and no
  ``probe.json`` yet (``force=true`` re-probes). This is how a sweep is probed after the fact when
  the training runs did not probe themselves.
- ``heal=true k=1``: besides the plain metrics, report them with token healing backing off k tokens
  (``heal=false``: plain only). Every other key is a ``ProbeConfig`` field (``n_prompts=200``,
  ``context_tokens=64``, ``min_prob=1e-4``, ...), see ``lmlab.eval.probe``.
- ``out=PATH``: where the JSON goes; default ``probe.json`` in the run directory when the checkpoint
  sits in ``<run_dir>/checkpoints/``, else beside the checkpoint. ``threads=N`` torch threads.

It prints boundary, mid-token and gap for every metric and variant, and writes the JSON.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from lmlab.eval.probe import METRICS, ProbeConfig, run_probe

CLI_KEYS = {"ckpt", "sweep", "heal", "k", "out", "threads", "force"}


def parse(argv: list[str]) -> tuple[dict, ProbeConfig]:
    from omegaconf import OmegaConf

    for a in argv:
        if "=" not in a:
            raise SystemExit(f"expected KEY=VALUE, got {a!r}\n\n{__doc__}")
    args = OmegaConf.to_container(OmegaConf.from_dotlist(argv), resolve=True)
    cli = {k: args.pop(k) for k in list(args) if k in CLI_KEYS}
    fields = {f.name for f in dataclasses.fields(ProbeConfig)}
    unknown = sorted(set(args) - fields)
    if unknown:
        raise SystemExit(f"unknown key(s) {', '.join(unknown)}; allowed: "
                         f"{', '.join(sorted(CLI_KEYS | fields))}")
    cfg = ProbeConfig(**args)
    if "k" in cli or "heal" in cli:
        heal = bool(cli.get("heal", True))
        cfg.heal_k = [int(cli.get("k", 1))] if heal else []
    problems = dataclasses.replace(cfg, enabled=True).check(None)
    if problems:
        raise SystemExit("invalid probe config:\n  - " + "\n  - ".join(problems))
    return cli, cfg


def resolve_ckpt(path: str) -> tuple[Path, Path]:
    """-> (checkpoint file, directory where probe.json goes)."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.exists():
        raise SystemExit(f"checkpoint not found: {p}")
    out_dir = p.parent.parent if p.parent.name == "checkpoints" else p.parent
    return p, out_dir


def load(ckpt: Path, log=print):
    """-> (model, tokenizer, run) through ``lmlab.train.checkpoint.load_checkpoint``, the one loader."""
    from lmlab.train.checkpoint import load_checkpoint

    c = load_checkpoint(str(ckpt))
    return c.model, c.tokenizer, c.run


def probe_checkpoint(ckpt: Path, cfg: ProbeConfig, out: Path, log=print) -> dict:
    from lmlab.data.corpus import load_corpus

    model, tokenizer, run = load(ckpt, log)
    problems = dataclasses.replace(cfg, enabled=True).check(run)
    if problems:
        raise SystemExit("invalid probe config for this model:\n  - " + "\n  - ".join(problems))
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

    cli, cfg = parse(sys.argv[1:] if argv is None else argv)
    if cli.get("threads"):
        torch.set_num_threads(int(cli["threads"]))
    if cli.get("sweep"):
        runs = sorted(p.parent.parent for p in Path(cli["sweep"]).rglob("checkpoints/last.ckpt"))
        if not runs:
            raise SystemExit(f"no run directory with checkpoints/last.ckpt under {cli['sweep']}")
        for rd in runs:
            if (rd / "probe.json").exists() and not cli.get("force"):
                print(f"skip {rd} (probe.json exists; force=true to redo)")
                continue
            print(f"== {rd}")
            probe_checkpoint(rd / "checkpoints" / "last.ckpt", cfg, rd / "probe.json")
        return 0
    if not cli.get("ckpt"):
        raise SystemExit(__doc__)
    ckpt, out_dir = resolve_ckpt(str(cli["ckpt"]))
    probe_checkpoint(ckpt, cfg, Path(cli["out"]) if cli.get("out") else out_dir / "probe.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
