"""End to end: a crashed run with tokenizer workers resumes from the stream position saved in its
checkpoint (no re-packing of consumed batches) and trains bit for bit like an uninterrupted one."""

import csv
from pathlib import Path

import lightning as L
import pytest
import torch

from lmlab.train.run import train


class Crash(Exception):
    pass


class CrashAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(f"simulated kill at step {self.step}")


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
