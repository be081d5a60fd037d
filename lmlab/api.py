"""lmlab from Python (a notebook, a script): the functions the commands use, nothing reimplemented.

    from lmlab import api
    run = api.compose("model=nano", "attention=mla", "trainer.max_steps=200")
    summary = api.train(run)                      # outputs/<run name>/, as `python train.py ...` would
    m = api.load(summary["run_dir"])              # the checkpoint loader of every command
    print(api.generate(m, "To be", max_new_tokens=50, seed=0))
    api.probe(summary["run_dir"], n_prompts=50)   # probe.json beside the run
    api.report(["outputs/my_sweep"], x="tokens")  # report.md + plots

- ``compose(*overrides)`` -> validated ``RunConfig``: ``lmlab.cli.compose_run`` (conf/ through Hydra's
  compose API, every problem at once with the closest valid names, ``ConfigError``). The run is named
  from the overrides as ``train.py`` names it (``run_name_from_overrides`` minus conf/config.yaml's
  ``exclude_keys``), so ``train`` here and ``python train.py`` with the same overrides share one
  directory (and resume each other), unless ``run_name=`` is given.
- ``train(run)`` -> the summary dict (also ``summary.json``), plus ``run_dir``: ``lmlab.train.run.train``.
  ``run`` may also be a list of overrides.
- ``load(ckpt)`` -> ``lmlab.train.checkpoint.Loaded`` (model in eval mode, tokenizer, RunConfig, step,
  state) of a checkpoint file or run directory: ``lmlab.train.checkpoint.load_checkpoint``.
- ``generate(model_or_ckpt, prompt, **keys)`` -> the continuation text: ``lmlab.cli.generate.main``
  (the same keys as ``python -m lmlab generate --help``: max_new_tokens, temperature, top_k, top_p,
  seed, heal, use_cache, bos, stop, device), with the text captured instead of printed.
- ``probe(ckpt, out=None, **keys)`` -> the probe result dict (also written as JSON): the keys of
  ``python -m lmlab probe --help`` (heal, k, n_prompts, context_tokens, ...).
- ``report(dirs, **keys)`` -> the report.md paths: ``lmlab.cli.report.report`` (baseline, x, where, out).

Errors are the commands' own: ``lmlab.errors.LmlabError`` subclasses (``ConfigError``,
``CheckpointError``...) and ``lmlab.cli.UsageError`` for a missing file or a wrong key, each one line.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

__all__ = ["compose", "train", "load", "generate", "probe", "report"]


def _exclude_keys() -> list[str]:
    from omegaconf import OmegaConf

    from lmlab.config import CONF_DIR

    cfg = OmegaConf.load(Path(CONF_DIR) / "config.yaml")
    return list(OmegaConf.select(cfg, "hydra.job.config.override_dirname.exclude_keys", default=[]) or [])


def compose(*overrides: str):
    """The validated RunConfig of ``overrides`` (``"model=nano"``, ``"optim.lr=3e-3"``...)."""
    from lmlab.cli import compose_run
    from lmlab.config import run_name_from_overrides

    ov = [str(o) for o in overrides]
    if len(ov) == 1 and isinstance(overrides[0], (list, tuple)):
        ov = [str(o) for o in overrides[0]]
    if not any(o.partition("=")[0].lstrip("+") == "run_name" for o in ov):
        name = run_name_from_overrides(ov, _exclude_keys())
        run = compose_run(ov)
        run.run_name = name  # set after composing: a name holds '=' and ',' (Hydra's sweep syntax)
        return run
    return compose_run(ov)


def train(run, log=print) -> dict:
    """Train ``run`` (a RunConfig, or a list of overrides) in its run directory -> its summary,
    with ``run_dir`` added. The same command again resumes it (``resume=auto``)."""
    from lmlab.train.run import train as _train

    if not hasattr(run, "trainer"):
        run = compose(*run)
    summary = _train(run, log=log)
    return {**summary, "run_dir": str(Path(run.run_dir or Path(run.out_dir) / run.run_name))}


def load(ckpt):
    """A checkpoint file or run directory -> ``Loaded`` (``.model``, ``.tokenizer``, ``.run``, ``.step``)."""
    from lmlab.cli import resolve_ckpt
    from lmlab.train.checkpoint import load_checkpoint

    return load_checkpoint(str(resolve_ckpt(str(ckpt))))


def _argv(keys: dict[str, Any]) -> list[str]:
    """Keyword arguments as the commands' ``key=value`` arguments (strings verbatim, others as YAML)."""
    out = []
    for k, v in keys.items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif v is None:
            v = "null"
        elif isinstance(v, (list, tuple)):
            v = json.dumps(list(v))
        out.append(f"{k}={v}")
    return out


def generate(model_or_ckpt, prompt: str = "", **keys) -> str:
    """The continuation of ``prompt`` (text only; the statistics line is dropped). ``model_or_ckpt``:
    what ``load`` returned, or a checkpoint file / run directory."""
    from lmlab.cli import generate as cmd

    loaded = model_or_ckpt if hasattr(model_or_ckpt, "model") else load(model_or_ckpt)
    out, err = io.StringIO(), io.StringIO()
    argv = [f"ckpt={loaded.path}", f"prompt={prompt}"] + _argv(keys)
    cmd.main(argv, load=lambda _: (loaded.model, loaded.tokenizer, loaded.run), out=out, err=err)
    text = out.getvalue()
    return text[:-1] if text.endswith("\n") else text  # the command ends its output with a newline


def probe(ckpt, out: str | Path | None = None, log=print, **keys) -> dict:
    """The continuation probe of a checkpoint or run directory (``probe.json`` in the run directory,
    or ``out``) -> its result."""
    from lmlab.cli import probe as cmd
    from lmlab.cli import resolve_ckpt

    argv = [f"ckpt={ckpt}"] + _argv(keys) + ([f"out={out}"] if out is not None else [])
    a, cfg = cmd.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    path = resolve_ckpt(a.ckpt)
    return cmd.probe_checkpoint(path, cfg, Path(a.out) if a.out else cmd.resolve_out(path), log=log)


def report(dirs, out: str | Path | None = None, baseline: str | None = None, x: str = "steps",
           where: str | dict | None = None, log=print, at: float | None = None) -> list[Path]:
    """The sweep report over run directories (language-model and digits runs) -> report.md paths."""
    from lmlab.cli.report import report as _report

    return _report(dirs, out, baseline, x, where, log=log, at=at)
