"""lmlab's own error types: problems the user can fix (a config key, a data file, a checkpoint).

``train.py`` (and the commands) print these as one clean message; every other exception is a bug or
an environment fault and keeps its traceback. Each subclass also derives from the builtin type that
callers caught before it existed (``ValueError``, ``FloatingPointError``), so ``except ValueError``
still works.
"""

from __future__ import annotations


class LmlabError(Exception):
    """Base of every error lmlab raises on purpose, with a message that names the key or file."""


class ResumeError(LmlabError, ValueError):
    """A run directory's checkpoint cannot resume this run (different config, seed, workers...)."""


class CheckpointError(LmlabError, ValueError):
    """A file is not an lmlab checkpoint of this format, or is damaged; the message names the file."""


class NonFiniteError(LmlabError, FloatingPointError):
    """Training stopped before the optimizer step because the loss or gradient norm was not finite."""


class MissingCheckpointError(LmlabError, FileNotFoundError):
    """``resume=true`` or ``resume=PATH`` names a checkpoint that does not exist."""


class CheckpointWriteError(LmlabError, OSError):
    """A checkpoint could not be written (disk full, permissions); the message names the directory."""


class RunDirLockedError(LmlabError):
    """Another live process owns the run directory (its lock names the pid, host and start time)."""


class RunDirError(LmlabError):
    """A run directory cannot be used as asked (e.g. records of a finished run without checkpoints)."""
