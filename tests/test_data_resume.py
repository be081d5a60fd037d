"""End to end: a crashed run with tokenizer workers resumes from the stream position saved in its
checkpoint (no re-packing of consumed batches) and trains bit for bit like an uninterrupted one."""

import csv
from pathlib import Path

import pytest
import torch
from conftest import Crash, CrashAt  # noqa: E402  (one definition, tests/conftest.py)

from lmlab.train.run import train


def losses(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


@pytest.mark.parametrize("workers", [2])
def test_crash_resume_with_workers_uses_the_saved_stream_position(compose, tiny_overrides, workers):
    extra = ["trainer.max_steps=9", "trainer.val_every=5", "tokenizer.sample=true",
             f"data.num_workers={workers}", "trainer.deterministic=true"]
    ref = compose(tiny_overrides + extra + ["run_name=ref"])
    train(ref, log=lambda *_: None)
    run = compose(tiny_overrides + extra + ["run_name=crashy"])
    with pytest.raises(Crash):
        train(run, log=lambda *_: None, callbacks=[CrashAt(7)])  # last checkpoint at step 5
    d = Path(run.out_dir) / "crashy"
    state = torch.load(d / "checkpoints/last.ckpt", weights_only=False)["TextDataModule"]
    # an odd step count with 2 workers: worker 1's batch is due next, and both hold a position
    assert state["num_workers"] == workers and state["ranks"][0]["next_wid"] == 1
    assert all(w["epoch"] >= 0 and w["pos"] > 0 for w in state["ranks"][0]["workers"])
    lines = []
    train(compose(tiny_overrides + extra + ["run_name=crashy"]), log=lines.append)
    assert not any("re-packing" in str(x) for x in lines), lines
    assert losses(Path(ref.out_dir) / "ref") == losses(d)
