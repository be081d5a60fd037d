"""Atomic checkpoints, retention, resume resolution, and graceful stop on SIGTERM.

- ``AtomicCheckpointIO`` reads through ``lmlab.train.checkpoint.read_checkpoint`` (weights only) and
  writes ``<path>.tmp`` then ``os.replace`` -- a crash mid-save never leaves
  a partial file at the final path, and the previous checkpoint stays loadable. A failed write
  (e.g. disk full) removes the temporary file and re-raises naming the directory.
- ``resolve_resume``: ``auto`` resumes from ``checkpoints/last.ckpt`` when it exists, else starts
  fresh; ``true`` requires it; ``false`` starts fresh; anything else is a checkpoint path.
- ``GracefulStop``: SIGTERM only sets a flag; at the next step boundary a checkpoint is written
  and training stops cleanly. With several processes the flag is OR-reduced over the ranks at every
  batch end, so all ranks save and stop at the same step whichever of them got the signal.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lmlab.errors import CheckpointWriteError, MissingCheckpointError


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise CheckpointWriteError(e.errno, f"could not write checkpoint in {path.parent}: {e.strerror}") from e

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Lightning's resume reads through lmlab's one safe reader (weights_only, refusals name the file)."""
        from lmlab.train.checkpoint import read_checkpoint

        return read_checkpoint(path, map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path) -> None:
        try:
            Path(path).unlink(missing_ok=True)
        except OSError as e:  # a failed delete must not stop training
            print(f"warning: could not delete old checkpoint {path}: {e}")


def resolve_resume(resume: str | bool, ckpt_dir: Path) -> str | None:
    last = ckpt_dir / "last.ckpt"
    resume = str(resume)
    if resume in ("auto", "", "none", "None"):
        return str(last) if last.exists() else None
    if resume in ("false", "False", "no"):
        return None
    if resume in ("true", "True", "yes"):
        if not last.exists():
            raise MissingCheckpointError(f"resume=true but there is no checkpoint in {ckpt_dir}")
        return str(last)
    if not Path(resume).exists():
        raise MissingCheckpointError(f"resume={resume}: no such checkpoint file")
    return resume


class StoppedBySignal(Exception):
    """Training stopped at a step boundary on SIGTERM, after writing a checkpoint."""


class GracefulStop(L.Callback):
    def __init__(self, ckpt_dir: Path):
        self.ckpt_dir = ckpt_dir
        self.requested = False
        self._previous = None

    def on_train_start(self, trainer, pl_module):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        except ValueError:  # not the main thread
            self._previous = None

    def _handler(self, signum, frame):
        self.requested = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.world_size > 1:
            # ranks may see the signal at different steps (or only one may get it); saving is a
            # collective, so every rank must decide at the same step: stop when any rank was asked
            self.requested = trainer.strategy.reduce_boolean_decision(self.requested, all=False)
        if self.requested and not trainer.should_stop:
            trainer.save_checkpoint(str(self.ckpt_dir / "last.ckpt"))
            if trainer.is_global_zero:
                print(f"SIGTERM: checkpoint written at step {trainer.global_step}; stopping")
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
