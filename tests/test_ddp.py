"""Two CPU processes (gloo, ``trainer.strategy=ddp trainer.devices=2``) through ``python train.py``,
as a user runs it: Lightning's subprocess launcher re-runs the script for rank 1 (issue 11 item 1).

- one consistent run directory, written once by rank zero;
- val bits/byte from two processes equals a one-process evaluation of the same checkpoint (1e-6):
  each rank scores a disjoint share of the validation blocks and the sums are all-reduced;
- SIGTERM to both processes, then the same command: the resumed run ends with exactly the weights of
  an uninterrupted two-process run;
- a two-process checkpoint is refused by a one-process resume (each rank's data share depends on it);
- the checkpoint holds both ranks' stream positions (gathered), and the resume restores them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY

ROOT = Path(__file__).resolve().parent.parent
DDP = ["trainer.strategy=ddp", "trainer.devices=2", "trainer.num_threads=1"]
STEPS = ["trainer.max_steps=40", "trainer.val_every=10", "trainer.log_every=2"]


def _env():
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("LOCAL_RANK", None)
    return env


def _cmd(out_dir, cache_dir, extra=()):
    over = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every", "trainer.log_every"))]
    return [sys.executable, "train.py", *over, *STEPS, *DDP, f"out_dir={out_dir}", f"cache_dir={cache_dir}", *extra]


def _run_dir(out_dir) -> Path:
    dirs = [p for p in Path(out_dir).iterdir() if (p / "config.yaml").exists()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def _weights(path) -> dict:
    from lmlab.train.checkpoint import read_checkpoint

    return read_checkpoint(path)["state_dict"]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, cache_dir):
    """One uninterrupted two-process run: (run dir, its stdout)."""
    out = tmp_path_factory.mktemp("ddp")
    p = subprocess.run(_cmd(out, cache_dir), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return _run_dir(out), p.stdout


@pytest.mark.slow
def test_two_processes_write_one_consistent_run_dir(ddp_run):
    d, stdout = ddp_run
    summary = json.loads((d / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["step"] == 40 and summary["stopped_by"] == "max_steps"
    # tokens over both ranks: 40 steps x 2 ranks x batch 4 x seq_len 32
    assert summary["tokens_seen"] == 40 * 2 * 4 * 32
    assert stdout.count("done: step 40") == 1, stdout  # rank zero speaks, once
    assert stdout.count("resuming from") == 0
    import csv

    with open(d / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss")]
    assert len(train_steps) == len(set(train_steps)) and train_steps == sorted(train_steps)
    val_bpb = [float(r["val/bpb"]) for r in rows if r.get("val/bpb")]
    assert len(val_bpb) == 4 and val_bpb[-1] == pytest.approx(summary["val_bpb"], rel=1e-6)
    assert sorted(p.name for p in (d / "checkpoints").iterdir()) == ["last.ckpt", "step-30.ckpt", "step-40.ckpt"]
    assert not list(d.rglob("*.tmp")), "a half-written file was left behind"


@pytest.mark.slow
def test_checkpoint_gathers_the_stream_position_of_each_rank(ddp_run):
    """Each rank reads its own shard, so each has its own position; the checkpoint (written by rank
    zero) must hold both, gathered, not rank zero's twice (resuming from it is the next test)."""
    from lmlab.train.checkpoint import read_checkpoint

    d, _ = ddp_run
    state = read_checkpoint(d / "checkpoints" / "last.ckpt")["TextDataModule"]
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    (w0,), (w1,) = (r["workers"] for r in state["ranks"])  # data.num_workers=0: one stream per rank
    assert w0["epoch"] >= 0 and w1["epoch"] >= 0 and w0["pos"] > 0 and w1["pos"] > 0
    assert (w0["epoch"], w0["pos"], w0["buf"].tolist()) != (w1["epoch"], w1["pos"], w1["buf"].tolist())


@pytest.mark.slow
def test_two_process_val_bpb_equals_one_process_evaluation(ddp_run, compose, cache_dir):
    from lmlab.registry import TASK
    from lmlab.tasks.base import model_weights
    from lmlab.train.checkpoint import read_checkpoint

    d, _ = ddp_run
    summary = json.loads((d / "summary.json").read_text())
    run = compose(TINY + [f"out_dir={d.parent}", f"cache_dir={cache_dir}"])
    task = TASK.get(run.task.name)(run, log=lambda *_: None)
    task.datamodule.setup("fit")
    module = task.module()
    module.model.load_state_dict(model_weights(read_checkpoint(d / "checkpoints" / "last.ckpt")))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.validate(module, datamodule=task.datamodule, verbose=False)
    one = float(trainer.callback_metrics["val/bpb"])
    # the same blocks, scored once each: equal up to float32 rounding inside the batches
    assert abs(summary["val_bpb"] - one) < 1e-6, (summary["val_bpb"], one)
    # and not trivially: rank zero's share alone gives another figure
    assert task.datamodule.val_blocks.shape[0] >= 2


@pytest.mark.slow
def test_resume_with_another_world_size_is_refused(ddp_run, compose, cache_dir, tmp_path):
    from lmlab.errors import ResumeError
    from lmlab.train.run import train

    d, _ = ddp_run
    run = compose(TINY + [f"out_dir={tmp_path}", f"cache_dir={cache_dir}", "trainer.max_steps=50"])
    run.resume = str(d / "checkpoints" / "last.ckpt")  # a path with '=' and ',': set past the parser
    with pytest.raises(ResumeError, match="world size 2"):
        train(run, log=lambda *_: None)


@pytest.mark.slow
def test_sigterm_and_rerun_continue_exactly(ddp_run, tmp_path, cache_dir):
    d_full, _ = ddp_run
    cmd = _cmd(tmp_path, cache_dir)
    p = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)  # its own process group: SIGTERM reaches both ranks
    lines = []
    try:
        for line in p.stdout:
            lines.append(line)
            if line.startswith("step 12/40"):
                os.killpg(p.pid, signal.SIGTERM)
                break
        rest = p.stdout.read()
        p.wait(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    out = "".join(lines) + rest
    assert "SIGTERM: checkpoint written at step" in out, out[-3000:]
    d = _run_dir(tmp_path)
    assert not (d / "summary.json").exists()  # unfinished: no summary
    from lmlab.train.checkpoint import read_checkpoint

    stopped_at = read_checkpoint(d / "checkpoints" / "last.ckpt")["global_step"]
    assert 12 <= stopped_at < 40
    time.sleep(1)
    q = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert q.returncode == 0, q.stdout[-3000:] + q.stderr[-3000:]
    assert f"resuming from {d / 'checkpoints' / 'last.ckpt'} at step {stopped_at}" in q.stdout
    # each rank restored its saved stream position (no fallback re-packing of the consumed batches)
    assert "holds no stream position" not in q.stdout + q.stderr
    a, b = _weights(d_full / "checkpoints" / "last.ckpt"), _weights(d / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    s_full = json.loads((d_full / "summary.json").read_text())
    s = json.loads((d / "summary.json").read_text())
    assert s["tokens_seen"] == s_full["tokens_seen"] and s["val_bpb"] == s_full["val_bpb"]


@pytest.mark.parametrize("world", [2, 3])
def test_validation_shares_cover_every_block_exactly_once(compose, tiny_overrides, world):
    """Not slow: the split itself. Sums over ranks equal one process's only if no block is scored
    twice (a padding DistributedSampler would repeat some) and none is skipped."""
    from types import SimpleNamespace

    from lmlab.train.datamodule import TextDataModule

    dm = TextDataModule(compose(tiny_overrides), log=lambda *_: None)
    dm.setup("fit")
    shares = []
    for rank in range(world):
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=world)
        shares.append(torch.cat([b[0] for b in dm.val_dataloader()]))
    seen = torch.cat(shares)
    assert seen.shape == dm.val_blocks.shape
    rows = sorted(map(tuple, seen.tolist()))
    assert rows == sorted(map(tuple, dm.val_blocks.tolist()))
