"""Shared fixtures: CPU only, one torch thread, a session-wide cache for trained tokenizers and
the default corpus, and helpers that compose conf/ into validated RunConfigs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """Tokenizers trained by tests are cached here for the whole session."""
    return str(tmp_path_factory.mktemp("lmlab-cache"))


@pytest.fixture(scope="session")
def compose():
    from lmlab.config import compose as _compose

    return _compose


TINY = [
    "model=nano", "model.d_model=32", "model.n_layer=2", "model.n_head=4", "model.seq_len=32",
    "data=pystdlib", "data.max_files=25", "data.batch_size=4", "data.num_workers=0",
    "tokenizer.vocab_size=400", "trainer.max_steps=6", "trainer.val_every=3",
    "trainer.limit_val_batches=2", "trainer.log_every=1", "trainer.progress_bar=false",
    "trainer.entropy_baseline=false",
]


@pytest.fixture
def tiny_overrides(tmp_path, cache_dir):
    """Overrides for a tiny end-to-end run in tmp_path (outputs) sharing the session cache."""
    return TINY + [f"out_dir={tmp_path}", f"cache_dir={cache_dir}"]


# A simulated kill -9 for exact-resume tests: the run raises at the start of a step, after the
# checkpoints of the previous steps were written (shared by test_train, test_reliability, ...).
import lightning as L  # noqa: E402


class Crash(Exception):
    pass


class CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"simulated kill at step {self.step}")
