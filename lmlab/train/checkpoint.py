"""The lmlab checkpoint format and the one function that reads it.

Format (``FORMAT``): a Lightning checkpoint (weights, optimizer, scheduler, loop counters) plus an
``lmlab`` section of tensors and plain data only -- the run config as a dict, the task name, the
tokenizer as ``{"name", "config", "model": bytes}`` (``Tokenizer.to_state``, never a pickled object),
counters, the validation history and the task's own state (``TaskModule.extra_state``). No RNG state is
stored: training randomness is seeded per step (``lmlab.tasks.base``).

Guarantees:
- Every read goes through ``read_checkpoint``, which uses ``torch.load(weights_only=True)``: a file
  holding any other pickled object is refused before that object is built, so opening a checkpoint
  never runs code from it. Lightning's resume reads through the same function (the checkpoint IO
  plugin in ``lmlab.train.checkpointing``).
- A file that is missing, empty, truncated, not a torch file, not an lmlab checkpoint, or of another
  format version raises ``CheckpointError`` -- one line naming the file. Checkpoints written before
  this format (with a pickled tokenizer) are refused that way: retrain, or read them with the older lmlab.
- ``load_checkpoint(path)`` returns the trained network in eval mode with its config and tokenizer,
  dispatching by the task recorded in the checkpoint (``Task.load_model``). Every command uses it.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from lmlab.errors import CheckpointError

FORMAT = "lmlab-checkpoint-2"


def read_checkpoint(path, map_location: Any = "cpu") -> dict:
    """The checkpoint dict of an lmlab checkpoint file, read safely; ``CheckpointError`` otherwise."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights_only" in str(e) or "Weights only" in str(e):
            raise CheckpointError(
                f"{p}: refused: it holds pickled objects other than tensors and plain data, which lmlab "
                "never writes (a checkpoint of an older lmlab, or a crafted file); nothing in it was run"
            ) from None
        raise CheckpointError(f"{p}: damaged or not a checkpoint (unpickling failed: {_first_line(e)})") from None
    except Exception as e:  # truncated zip, empty file, garbage: torch raises many types, none names the file
        raise CheckpointError(f"{p}: damaged or not a checkpoint ({type(e).__name__}: {_first_line(e)})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("lmlab"), dict):
        raise CheckpointError(f"{p}: not an lmlab checkpoint (no 'lmlab' section)")
    fmt = ckpt["lmlab"].get("format")
    if fmt != FORMAT:
        raise CheckpointError(f"{p}: checkpoint format {fmt!r}; this lmlab reads {FORMAT!r} only "
                              "(written by an older lmlab: retrain, or load it with that version)")
    return ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


@dataclass
class Loaded:
    """What ``load_checkpoint`` returns."""

    path: str
    task: str  # the task that trained it ("lm", "image_text")
    run: Any  # the RunConfig it was trained with
    model: torch.nn.Module  # in eval mode; for image_text the best validation weights
    tokenizer: Optional[Any]  # None for image_text (a fixed byte vocabulary)
    step: int  # optimizer steps taken
    state: dict  # the raw ``lmlab`` section (counters, val_history, task state)


def run_config(state: dict, path) -> Any:
    """The RunConfig recorded in a checkpoint's ``lmlab`` section (validated key by key, not re-checked)."""
    from lmlab.config import RunConfig, from_dict, load_variants

    load_variants()
    problems: list[str] = []
    run = from_dict(RunConfig, state["config"], "", problems)
    if problems or run is None:
        raise CheckpointError(f"{path}: its config does not fit this lmlab: {'; '.join(problems)}")
    return run


def save_weights_checkpoint(path, run, model: torch.nn.Module, tokenizer, step: int = 0) -> None:
    """A weights-only checkpoint of this format (no optimizer or loop state: it loads, it does not resume),
    for a model built outside ``train`` -- a converted or hand-made one, tests' tiny models."""
    from lmlab.config import to_dict

    torch.save({
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
        "global_step": step,
        "lmlab": {"format": FORMAT, "task": run.task.name, "config": to_dict(run),
                  "tokenizer": tokenizer.to_state() if tokenizer is not None else None,
                  "tokenizer_sha256": tokenizer.content_hash() if tokenizer is not None else None},
    }, path)


def load_checkpoint(path, map_location: Any = "cpu") -> Loaded:
    """The one checkpoint loader (generate, probe, inspect, report, resume): see the module docstring."""
    from lmlab.registry import TASK, UnknownVariantError
    from lmlab.tokenizers.base import Tokenizer

    ckpt = read_checkpoint(path, map_location)
    state = ckpt["lmlab"]
    try:
        task_cls = TASK.get(state["task"])
    except UnknownVariantError as e:
        raise CheckpointError(f"{path}: {e}") from None
    run = run_config(state, path)
    tokenizer = Tokenizer.from_state(state["tokenizer"]) if state.get("tokenizer") is not None else None
    recorded = state.get("tokenizer_sha256")
    if tokenizer is not None and recorded is not None and tokenizer.content_hash() != recorded:
        raise CheckpointError(f"{path}: its tokenizer does not match the sha256 recorded beside it (damaged)")
    model = task_cls.load_model(run, ckpt, tokenizer)
    return Loaded(str(path), state["task"], run, model, tokenizer, int(ckpt.get("global_step", 0)), state)
