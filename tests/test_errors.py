"""Errors keep their causes: lmlab's own errors are one clean message; any other exception keeps its
traceback, on the console and (in a multirun) in the job's error.txt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lmlab.config import ConfigError
from lmlab.data.sources.base import DataError
from lmlab.errors import (
    CheckpointError,
    CheckpointWriteError,
    LmlabError,
    MissingCheckpointError,
    NonFiniteError,
    ResumeError,
)
from lmlab.registry import UnknownVariantError

ROOT = Path(__file__).resolve().parent.parent


def test_lmlab_errors_share_one_base_and_keep_their_builtin_types():
    for cls, builtin in ((ConfigError, ValueError), (DataError, ValueError), (ResumeError, ValueError),
                         (CheckpointError, ValueError), (NonFiniteError, FloatingPointError),
                         (UnknownVariantError, KeyError), (CheckpointWriteError, OSError),
                         (MissingCheckpointError, FileNotFoundError)):
        assert issubclass(cls, LmlabError) and issubclass(cls, builtin), cls


@pytest.mark.slow
def test_a_foreign_exception_keeps_its_traceback_alone_and_in_a_sweep(tiny_overrides, tmp_path):
    import importlib.util

    # a valid Lightning value whose package is missing: Lightning's own error (not lmlab's) at Trainer(...)
    assert importlib.util.find_spec("deepspeed") is None, "this test needs a strategy whose package is absent"
    bad = [*tiny_overrides, "trainer.strategy=deepspeed"]
    r = subprocess.run([sys.executable, "train.py", *bad], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "Traceback" in r.stderr and "DeepSpeed" in r.stderr
    r = subprocess.run([sys.executable, "train.py", "-m", *bad, "sweep_name=sw", "seed=1"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    (err,) = list((tmp_path / "sw").glob("*/error.txt"))
    text = err.read_text()
    assert text.startswith("Traceback (most recent call last)") and "DeepSpeed" in text
    assert "lmlab/train/run.py" in text  # the frames, not only the message


@pytest.mark.slow
def test_an_lmlab_error_is_one_clean_message(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "data=digits", f"out_dir={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "task=lm cannot train data=digits" in r.stderr and "Traceback" not in r.stderr


def test_a_misspelled_key_names_the_closest_ones_not_hydras_plus_advice(tmp_path):
    """Hydra refuses `trainer.max_step=10` before lmlab validates, advising `+trainer.max_step` (which
    lmlab would then refuse): train.py answers first, naming the key and the closest valid ones."""
    r = subprocess.run([sys.executable, "train.py", "trainer.max_step=10", "attention=mla", f"out_dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "trainer.max_step: unknown key (did you mean `trainer.max_steps`" in r.stderr
    assert "+trainer.max_step" not in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())  # nothing was written
