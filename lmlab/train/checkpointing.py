"""Checkpoint writing, retention, resume resolution, graceful stop, and the run-directory lock.

- ``AtomicCheckpointIO`` reads through ``lmlab.train.checkpoint.read_checkpoint`` (weights only) and
  writes ``<path>.tmp`` then ``os.replace``: a crash mid-save never leaves a partial file at the final
  path, and the previous checkpoint stays loadable. A failed write of any kind (``OSError`` such as
  ENOSPC, torch's ``RuntimeError`` "inline_container.cc ... unexpected pos", anything else) removes the
  temporary file and raises ``CheckpointWriteError`` naming the directory.
- ``CheckpointWriter`` is the ONE writer of a run's checkpoints (Lightning's ``ModelCheckpoint`` is not
  used, so there are never ``last-vN.ckpt`` files): every ``trainer.val_every`` steps it writes
  ``step-N.ckpt`` and points ``last.ckpt`` at the same bytes (a hard link, a copy where links are not
  supported), then keeps exactly the ``keep_last`` newest ``step-N.ckpt`` with N <= the current step.
  SIGTERM and SIGINT only set a flag; at the next step boundary ``last.ckpt`` is written through the
  same path and training stops (``StoppedBySignal``, exit 143 / 130 in train.py). With several processes
  the flag is OR-reduced over the ranks at every step, so all ranks save and stop at the same step
  whichever of them got the signal (saving is a collective). ``save_last`` writes the final ``last.ckpt``.
- ``clean_tmp`` removes ``*.tmp`` left by a kill during a save (called once the run directory is locked).
- ``resolve_resume``: ``auto`` resumes from the newest *complete, loadable* checkpoint of the run
  (``last.ckpt`` and every ``step-N.ckpt`` compared by the step recorded inside them; each damaged one
  is skipped with one line saying which and why), else starts fresh; ``true`` requires one; ``false``
  starts fresh; anything else is a checkpoint path, used as given.
- ``RunLock``: one process per run directory (``.lock``: pid, host, start time, held with ``flock``
  for the life of the run). A second process fails at once (``RunDirLockedError`` naming the directory
  and the owner); the lock of a dead process is free (the kernel drops ``flock`` with the process) and
  is taken over with a message naming the old owner.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from lmlab.errors import CheckpointError, CheckpointWriteError, MissingCheckpointError, RunDirLockedError

STEP_RE = re.compile(r"^step-(\d+)\.ckpt$")


def _write_atomic(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path``; any failure removes the temporary file and raises
    ``CheckpointWriteError`` naming the directory (the file at ``path`` is untouched)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, (KeyboardInterrupt, SystemExit, CheckpointWriteError)):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {_first_line(e)}"
        err = CheckpointWriteError(f"could not write checkpoint in {path.parent}: {reason} (writing {path.name}; "
                                   "the previous checkpoint is intact: fix the cause and rerun to resume)")
        if isinstance(e, OSError):
            err.errno = e.errno
        raise err from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else "no message"


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint, path, storage_options=None):
        def write(tmp: Path):
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        _write_atomic(Path(path), write)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Lightning's resume reads through lmlab's one safe reader (weights_only, refusals name the file)."""
        from lmlab.train.checkpoint import read_checkpoint

        return read_checkpoint(path, map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path) -> None:
        remove_quietly(Path(path))


def remove_quietly(path: Path) -> None:
    try:
        Path(path).unlink(missing_ok=True)
    except OSError as e:  # a failed delete must not stop training
        print(f"warning: could not delete old checkpoint {path}: {e}")


def link_or_copy(src: Path, dst: Path) -> None:
    """``dst`` atomically replaced by the bytes of the complete file ``src`` (a hard link: no second write)."""

    def write(tmp: Path):
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError:  # a file system without hard links
            shutil.copyfile(src, tmp)

    _write_atomic(dst, write)


def step_files(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """``(N, path)`` of every ``step-N.ckpt``, oldest first."""
    if not ckpt_dir.is_dir():
        return []
    out = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name))]
    return sorted(out)


def clean_tmp(ckpt_dir: Path, log=print) -> None:
    """Remove ``*.tmp`` files a kill during a save left behind (never a complete checkpoint)."""
    if not ckpt_dir.is_dir():
        return
    for p in sorted(ckpt_dir.glob("*.tmp")):
        remove_quietly(p)
        log(f"removed {p} (left by an interrupted save)")


class StoppedBySignal(Exception):
    """Training stopped at a step boundary on SIGTERM/SIGINT, after writing a checkpoint."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


class CheckpointWriter(L.Callback):
    """The one writer of ``checkpoints/`` (see the module docstring)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, ckpt_dir: Path, every: int, keep_last: int, log=print):
        self.ckpt_dir = Path(ckpt_dir)
        self.every, self.keep_last, self._log = every, keep_last, log
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._seen: int | None = None  # the optimizer step of the last step boundary handled

    @property
    def requested(self) -> bool:
        return self.signum is not None

    # ------------------------------------------------------------------ signals
    def on_train_start(self, trainer, pl_module):
        self._seen = trainer.global_step  # a resumed run's step is already on disk
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handler)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handler(self, signum, frame):
        self.signum = signum  # only a flag: the checkpoint is written at the step boundary

    def restore_signals(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}

    def on_train_end(self, trainer, pl_module):
        self.restore_signals()

    def on_exception(self, trainer, pl_module, exception):
        self.restore_signals()

    # ------------------------------------------------------------------ writing
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == self._seen:  # a micro-batch of gradient accumulation: no optimizer step, no boundary
            return
        self._seen = step
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            self.signum = self.signum or signal.SIGTERM  # another rank was asked to stop
        if step % self.every == 0:
            self.save_step(trainer)
        if self.requested and not trainer.should_stop:
            if step % self.every != 0:
                self.save_last(trainer)
            name = signal.Signals(self.signum).name
            self._log(f"{name}: checkpoint written at step {step} in {self.ckpt_dir}; stopping")
            trainer.should_stop = True

    def save_step(self, trainer) -> None:
        """``step-N.ckpt`` + ``last.ckpt`` (the same bytes), then retention."""
        step = trainer.global_step
        path = self.ckpt_dir / f"step-{step}.ckpt"
        trainer.save_checkpoint(str(path))
        if trainer.is_global_zero:
            link_or_copy(path, self.ckpt_dir / "last.ckpt")
            self.prune(step)

    def save_last(self, trainer) -> None:
        trainer.save_checkpoint(str(self.ckpt_dir / "last.ckpt"))

    def prune(self, step: int) -> None:
        """Keep exactly the ``keep_last`` newest ``step-N.ckpt`` with N <= step; files with N > step
        are left over from a run that went further before being resumed from an older checkpoint."""
        files = step_files(self.ckpt_dir)
        keep = {p for n, p in files if n <= step}
        keep = set(sorted(keep, key=lambda p: int(STEP_RE.match(p.name).group(1)))[-self.keep_last:])
        for _, p in files:
            if p not in keep:
                remove_quietly(p)


# ---------------------------------------------------------------------- resume


def checkpoint_step(path: Path) -> int:
    """The step recorded in a checkpoint; ``CheckpointError`` (naming the file) if it does not load."""
    from lmlab.train.checkpoint import read_checkpoint

    state = read_checkpoint(path)
    return int(state["global_step"])


def newest_checkpoint(ckpt_dir: Path, log=print) -> tuple[str | None, list[str]]:
    """The newest complete, loadable checkpoint of a run (by recorded step; ``last.ckpt`` wins a tie),
    and one line per damaged file skipped."""
    candidates = [ckpt_dir / "last.ckpt"] + [p for _, p in reversed(step_files(ckpt_dir))]
    best: tuple[int, int, Path] | None = None
    skipped = []
    for rank, p in enumerate(candidates):
        if not p.exists():
            continue
        hint = STEP_RE.match(p.name)
        if best is not None and hint and int(hint.group(1)) < best[0]:
            continue  # older by its name than one already loaded: no need to read it
        try:
            step = checkpoint_step(p)
        except CheckpointError as e:
            skipped.append(f"skipping {e}")
            log(f"resume: skipping {e}")
            continue
        if best is None or step > best[0]:
            best = (step, rank, p)
    return (str(best[2]) if best else None), skipped


def resolve_resume(resume: str | bool, ckpt_dir: Path, log=print) -> str | None:
    ckpt_dir = Path(ckpt_dir)
    resume = str(resume)
    if resume in ("false", "False", "no"):
        return None
    if resume in ("auto", "", "none", "None", "true", "True", "yes"):
        path, skipped = newest_checkpoint(ckpt_dir, log)
        if path is None and resume in ("true", "True", "yes"):
            raise MissingCheckpointError(f"resume=true but there is no {'loadable ' if skipped else ''}"
                                         f"checkpoint in {ckpt_dir}")
        if path is None and skipped:  # never silently retrain over damaged checkpoints
            raise CheckpointError(
                f"no loadable checkpoint in {ckpt_dir} ({'; '.join(r.removeprefix('skipping ') for r in skipped)}); "
                "resume=false starts this run over, or move the folder away"
            )
        return path
    if Path(resume).is_dir():  # a run's checkpoint folder (resume=RUN_NAME): its newest loadable one
        path, skipped = newest_checkpoint(Path(resume), log)
        if path is None:
            raise MissingCheckpointError(f"resume={resume}: no {'loadable ' if skipped else ''}checkpoint in it")
        return path
    if not Path(resume).exists():
        raise MissingCheckpointError(f"resume={resume}: no such checkpoint file")
    return resume


# ---------------------------------------------------------------------- lock


class RunLock:
    """``with RunLock(run_dir, log):`` -- exclusive ownership of a run directory (module docstring)."""

    NAME = ".lock"

    def __init__(self, run_dir, log=print):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.NAME
        self.log = log
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _read_owner(fd)
                os.close(fd)
                raise RunDirLockedError(
                    f"run directory {self.run_dir} is in use by {_describe(owner)} (lock {self.path}); "
                    "wait for it to finish, or choose another run_name="
                ) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:  # the owner removed the file between our open and our flock: try again
                os.close(fd)
                continue
            old = _read_owner(fd)
            if old and old.get("pid") != os.getpid():
                self.log(f"taking over the stale lock of {self.run_dir} left by {_describe(old)} (no longer running)")
            me = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
            self._fd = fd
            return self
        raise RunDirLockedError(f"run directory {self.run_dir}: could not take its lock {self.path}")

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read_owner(fd: int) -> dict:
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data.decode()) if data else {}
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "another process"
    return f"pid {owner.get('pid')} on {owner.get('host')} (started {owner.get('started')})"
