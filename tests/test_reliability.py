"""Trustworthy run directories (issue 10): one test per promise of ../shared/RELIABILITY.md that is not
tested elsewhere. Where each numbered item is covered:

Resume
 1. kill and resume, bit for bit ........ test_train.py::test_crash_and_resume_is_bit_for_bit
 2. graceful stop (SIGTERM / SIGINT) ..... test_train.py::test_sigterm_checkpoints_at_the_step_boundary_and_resumes,
                                          test_item02_sigint_checkpoints_and_exits_130,
                                          test_item02_sigterm_then_kill9_resumes_from_the_newest (real processes)
 3. data order .......................... test_data.py (start batches mid-epoch / past epochs, workers)
 4. RNG (dropout, sampling tokenizer) .... test_train.py::test_crash_and_resume_is_bit_for_bit (dropout + sample)
 5. mismatch refused .................... test_train.py::test_resume_with_other_worker_count_is_refused,
                                          test_resume_with_another_model_is_refused_naming_every_difference
 6. resume semantics .................... test_checkpointing.py::test_resume_resolution,
                                          test_item06_kill_during_save_resumes_from_the_newest_complete,
                                          test_item06_damaged_last_ckpt_resumes_from_step_n (truncated, empty)
 7. stable run dir ...................... test_run_identity.py, test_train.py::test_run_writes_complete_run_dir_...
Checkpoint integrity
 8. atomic write ........................ test_checkpointing.py::test_failed_save_leaves_no_partial_file_...,
                                          test_item08_every_kind_of_write_error_is_one_error_naming_the_dir
 9. disk full ........................... test_item09_write_error_mid_run_keeps_the_previous_checkpoint
10. retention ........................... test_item10_keep_last_is_exact_and_no_versioned_files,
                                          test_checkpointing.py::test_failed_delete_does_not_raise
11. portability ......................... test_checkpoint_format.py
Numerics
12. NaN/inf stops before the update ..... test_train.py::test_non_finite_loss_stops_before_the_update,
                                          test_item21_non_finite_loss_leaves_error_txt_removed_by_a_good_rerun
13. same seed, same curve ............... test_golden.py
Config
14-16. unknown keys, combinations, shipped configs .. test_config.py, test_defaults.py, test_errors.py;
       trainer keys and seed: test_item14_trainer_keys_and_seed_fail_before_any_work
Bad input data
17-19 ................................... test_data.py, test_sentencepiece.py (the data engineer's)
Operations
20. W&B offline / failing ............... test_train.py::test_wandb_offline_run_finishes_even_when_training_raises,
                                          test_item20_wandb_failing_to_start_or_log_warns_and_training_goes_on
21. multirun ............................ test_train.py::test_multirun_makes_one_dir_per_job_and_survives_a_failing_job
                                          (exits 1 naming the failed job), test_item21_non_finite_loss_leaves_error_txt_...
22. W&B continuity ...................... test_item22_resumed_run_continues_the_same_wandb_run
Security and records
23. loading runs no code ................ test_checkpoint_format.py
24. one owner per run directory ......... test_item24_second_owner_fails_at_once_and_stale_lock_is_taken_over,
                                          test_item02_sigterm_then_kill9_resumes_from_the_newest (kill -9's lock)
25. nothing escapes out_dir / refused
    resume leaves config.yaml ........... test_item25_run_name_cannot_leave_out_dir,
                                          test_item25_refused_resume_leaves_the_run_dir_as_it_was,
                                          test_item25_finished_run_without_checkpoints_is_refused
26-27. caches verified, downloads pinned . the data engineer's tests (test_data.py, test_sentencepiece.py)
28. records are exact ................... test_item28_each_row_holds_the_values_of_its_step (log_every 1, 5, 10),
                                          test_item28_no_row_lost_or_duplicated_across_resume_and_extension
"""

from __future__ import annotations

import csv
import errno
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lmlab.errors import CheckpointWriteError, ResumeError, RunDirError, RunDirLockedError
from lmlab.train.checkpointing import AtomicCheckpointIO, RunLock, StoppedBySignal
from lmlab.train.run import train

ROOT = Path(__file__).resolve().parent.parent
quiet = lambda *_: None  # noqa: E731


from conftest import Crash, CrashAt  # noqa: E402  (one definition, tests/conftest.py)


class SignalAt(L.Callback):
    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class RecordLoss(L.Callback):
    """The loss of the batch trained at each global_step, as the training step returned it."""

    def __init__(self):
        self.losses: dict[int, float] = {}
        self._step = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[self._step] = outputs["loss"].item()


class FailSavesFrom(L.Callback):
    """From ``step`` on, torch.save raises ``error`` after writing a few bytes (a disk filling up)."""

    def __init__(self, step, error, monkeypatch):
        self.step, self.error, self.mp = step, error, monkeypatch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            def failing(obj, f, *a, **k):
                f.write(b"partial")
                raise self.error

            self.mp.setattr(torch, "save", failing)


def rows(run_dir) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def train_rows(run_dir) -> dict[int, float]:
    out = {}
    for r in rows(run_dir):
        if r.get("train/loss"):
            step = int(r["step"])
            assert step not in out, f"train row at step {step} twice"
            out[step] = float(r["train/loss"])
    return out


def val_steps(run_dir) -> list[int]:
    return [int(r["step"]) for r in rows(run_dir) if r.get("val/loss")]


def ckpt_step(path) -> int:
    return int(torch.load(path, weights_only=True)["global_step"])


def ckpt_names(d) -> list[str]:
    return sorted(p.name for p in (Path(d) / "checkpoints").iterdir())


# ------------------------------------------------------------------------------------------ resume


def test_item02_sigint_checkpoints_and_exits_130(compose, tiny_overrides):
    run = compose(tiny_overrides + ["run_name=int", "trainer.max_steps=8", "trainer.val_every=100"])
    with pytest.raises(StoppedBySignal, match=r"stopped by SIGINT at step 3; checkpoint .*int/checkpoints/last.ckpt") as e:
        train(run, log=quiet, callbacks=[SignalAt(2, signal.SIGINT)])
    assert e.value.exit_code == 130
    d = Path(run.out_dir) / "int"
    assert ckpt_step(d / "checkpoints/last.ckpt") == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert not (d / ".lock").exists()


def _wait_for_step(proc, run_dir: Path, step: int, timeout=300.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
        try:
            if any(int(r["step"]) >= step for r in rows(run_dir) if r.get("step")):
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached")


@pytest.mark.slow
def test_item02_sigterm_then_kill9_resumes_from_the_newest(tiny_overrides, tmp_path):
    """The issue's sequence with real processes: SIGTERM early, rerun, kill -9 later, rerun: the last run
    resumes from the newest checkpoint (not the SIGTERM one), with no -vN files and keep_last honoured."""
    drop = ("trainer.max_steps", "trainer.val_every")
    args = [a for a in tiny_overrides if not a.startswith(drop)]
    cmd = [sys.executable, "train.py", *args, "run_name=seq", "trainer.max_steps=120", "trainer.val_every=10",
           "trainer.keep_last=2"]
    d = tmp_path / "seq"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(p, d, 3)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    s1 = int(re.search(r"stopped by SIGTERM at step (\d+)", err).group(1))
    assert ckpt_step(d / "checkpoints/last.ckpt") == s1

    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_step(p, d, 35)
    p.kill()  # SIGKILL: no handler, no cleanup, the lock file stays behind
    p.communicate(timeout=60)
    assert (d / ".lock").exists()
    names = ckpt_names(d)
    assert not [n for n in names if "-v" in n], names
    steps = sorted(int(n[5:-5]) for n in names if n.startswith("step-"))
    assert len(steps) == 2 and steps[-1] >= 30, names  # keep_last=2, exactly
    newest = max(steps[-1], ckpt_step(d / "checkpoints/last.ckpt"))

    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"at step {newest}" in r.stdout and newest > s1, r.stdout[-2000:]
    assert "taking over the stale lock" in r.stdout
    assert ckpt_names(d) == ["last.ckpt", "step-110.ckpt", "step-120.ckpt"]
    assert sorted(train_rows(d)) == list(range(120))  # every step logged once across three processes


def _finished(compose, tiny_overrides, name, *extra):
    run = compose(tiny_overrides + [f"run_name={name}", *extra])
    train(run, log=quiet)
    return run, Path(run.out_dir) / name


def test_item06_kill_during_save_resumes_from_the_newest_complete(compose, tiny_overrides):
    run, d = _finished(compose, tiny_overrides, "killsave")  # step-3, step-6, last (6)
    c = d / "checkpoints"
    (c / "last.ckpt").write_bytes((c / "step-3.ckpt").read_bytes())  # last.ckpt older than step-6
    (c / "last.ckpt.tmp").write_bytes(b"half a checkpoint")  # the kill hit while writing it
    logs = []
    s = train(compose(tiny_overrides + ["run_name=killsave", "trainer.max_steps=9"]), log=logs.append)
    assert any(f"resuming from {c / 'step-6.ckpt'} at step 6" in m for m in logs), logs
    assert any("last.ckpt.tmp" in m and "removed" in m for m in logs)
    assert s["step"] == 9 and not list(c.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_item06_damaged_last_ckpt_resumes_from_step_n(compose, tiny_overrides, damage):
    run, d = _finished(compose, tiny_overrides, f"dmg-{damage}")
    last = d / "checkpoints/last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"")
    logs = []
    s = train(compose(tiny_overrides + [f"run_name=dmg-{damage}", "trainer.max_steps=9"]), log=logs.append)
    skipped = [m for m in logs if "skipping" in m]
    assert len(skipped) == 1 and str(last) in skipped[0] and "damaged" in skipped[0], logs
    assert any("step-6.ckpt at step 6" in m for m in logs), logs
    assert s["step"] == 9 and ckpt_step(last) == 9  # last.ckpt rewritten by the resumed run


# ------------------------------------------------------------------------------- checkpoint integrity


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4378"),
    PermissionError(errno.EACCES, "Permission denied"),
    ValueError("anything else"),
], ids=["enospc", "inline_container", "eacces", "other"])
def test_item08_every_kind_of_write_error_is_one_error_naming_the_dir(tmp_path, monkeypatch, error):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def failing(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise error

    monkeypatch.setattr(torch, "save", failing)
    with pytest.raises(CheckpointWriteError, match=f"could not write checkpoint in {path.parent}") as e:
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    assert "\n" not in str(e.value)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert torch.load(path, weights_only=True)["step"] == 1


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 4480 vs 4378"),
], ids=["enospc", "inline_container"])
def test_item09_write_error_mid_run_keeps_the_previous_checkpoint(compose, tiny_overrides, monkeypatch, error):
    name = f"full-{type(error).__name__}"
    run = compose(tiny_overrides + [f"run_name={name}"])
    d = Path(run.out_dir) / name
    with pytest.raises(CheckpointWriteError, match=f"could not write checkpoint in {d / 'checkpoints'}"):
        train(run, log=quiet, callbacks=[FailSavesFrom(4, error, monkeypatch)])
    monkeypatch.undo()
    assert ckpt_names(d) == ["last.ckpt", "step-3.ckpt"]  # nothing partial; the previous one intact
    assert ckpt_step(d / "checkpoints/last.ckpt") == 3
    assert "CheckpointWriteError" in (d / "error.txt").read_text()
    logs = []
    s = train(compose(tiny_overrides + [f"run_name={name}"]), log=logs.append)
    assert any("at step 3" in m for m in logs) and s["step"] == 6
    assert not (d / "error.txt").exists()


def test_item10_keep_last_is_exact_and_no_versioned_files(compose, tiny_overrides):
    extra = ["trainer.max_steps=10", "trainer.val_every=2", "trainer.keep_last=2"]
    run = compose(tiny_overrides + ["run_name=keep", *extra])
    with pytest.raises(StoppedBySignal):
        train(run, log=quiet, callbacks=[SignalAt(2, signal.SIGTERM)])  # SIGTERM right after a step-N save
    d = Path(run.out_dir) / "keep"
    train(compose(tiny_overrides + ["run_name=keep", *extra]), log=quiet)
    assert ckpt_names(d) == ["last.ckpt", "step-10.ckpt", "step-8.ckpt"]


# ------------------------------------------------------------------------------------------ config


def test_item14_trainer_keys_and_seed_fail_before_any_work(compose):
    from lmlab.config import ConfigError

    bad = {
        "trainer.precision=32-mixed": "trainer.precision='32-mixed' is not one of",
        "trainer.accelerator=gpx": "trainer.accelerator='gpx' is not one of",
        "trainer.strategy=dpp": "(did you mean `trainer.strategy=ddp`",
        "trainer.devices=0": "trainer.devices=0 must be >= 1",
        "seed=-1": "seed=-1 must be in [0, 2**32)",
    }
    if not torch.cuda.is_available():
        bad["trainer.accelerator=gpu"] = "trainer.accelerator=gpu: no CUDA GPU is available"
    for override, message in bad.items():
        with pytest.raises(ConfigError) as e:
            compose([override])
        assert message in str(e.value), (override, str(e.value))


def test_item14_trainer_names_are_lightnings():
    import typing

    from lightning.fabric.connector import _PRECISION_INPUT
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from lmlab.config import ACCELERATORS, PRECISIONS, STRATEGIES

    def flat(tp):
        out = []
        for a in typing.get_args(tp):
            out += flat(a) if typing.get_args(a) else [a]
        return out

    assert set(PRECISIONS) <= {str(v) for v in flat(_PRECISION_INPUT)}
    assert set(ACCELERATORS) - {"gpu", "auto"} <= set(AcceleratorRegistry.available_accelerators())
    assert set(STRATEGIES) - {"auto"} <= set(StrategyRegistry.available_strategies())


# ------------------------------------------------------------------------------------------ operations


def test_item20_wandb_failing_to_start_or_log_warns_and_training_goes_on(compose, tiny_overrides, monkeypatch,
                                                                         capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")

    def no_init(*a, **k):
        raise RuntimeError("cannot reach the server")

    monkeypatch.setattr(wandb, "init", no_init)
    s = train(compose(tiny_overrides + ["run_name=wbstart", "logger=wandb", "trainer.max_steps=3"]), log=quiet)
    out = capsys.readouterr().out
    assert s["step"] == 3 and out.count("W&B could not start") == 1
    monkeypatch.undo()
    monkeypatch.setenv("WANDB_MODE", "offline")

    from wandb.sdk.wandb_run import Run

    def no_log(self, *a, **k):
        raise OSError("sync failed")

    monkeypatch.setattr(Run, "log", no_log)
    run = compose(tiny_overrides + ["run_name=wblog", "logger=wandb", "trainer.max_steps=3"])
    s = train(run, log=quiet)
    out = capsys.readouterr().out
    assert s["step"] == 3 and out.count("warning: W&B logging failed") == 1, out
    assert sorted(train_rows(Path(run.out_dir) / "wblog")) == [0, 1, 2]  # the CSV has every row


@pytest.mark.slow
def test_item22_resumed_run_continues_the_same_wandb_run(compose, tiny_overrides, monkeypatch):
    from lmlab.train.logging import SafeWandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    landed = {}
    original = SafeWandbLogger.set_summary

    def spy(self, values):  # read back what the W&B run summary holds (offline: not in a json file)
        original(self, values)
        landed.update({k: self.experiment.summary[k] for k in ("step", "val_bpb")})

    monkeypatch.setattr(SafeWandbLogger, "set_summary", spy)
    base = tiny_overrides + ["run_name=wbc", "logger=wandb"]
    train(compose(base + ["trainer.max_steps=3"]), log=quiet)
    d = Path(compose(base).out_dir) / "wbc"
    run_id = (d / "wandb_id.txt").read_text().strip()
    train(compose(base + ["trainer.max_steps=6"]), log=quiet)  # extended: resumed, same W&B run
    assert (d / "wandb_id.txt").read_text().strip() == run_id
    offline = sorted((d / "wandb").glob("offline-run-*"))
    # offline-run-<time>-<id>; W&B appends -1, -2 ... when both runs start within the same second
    assert len(offline) == 2 and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name)
                                     for p in offline), [p.name for p in offline]
    summary = (d / "summary.json").read_text()
    assert landed["step"] == 6 and f"{landed['val_bpb']}" in summary


def test_item21_non_finite_loss_leaves_error_txt_removed_by_a_good_rerun(compose, tiny_overrides):
    class PoisonAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4:
                forward = pl_module.model.forward
                pl_module.model.forward = lambda *a, **k: forward(*a, **k) * float("nan")

    run = compose(tiny_overrides + ["run_name=poison"])
    with pytest.raises(FloatingPointError):
        train(run, log=quiet, callbacks=[PoisonAt()])
    d = Path(run.out_dir) / "poison"
    text = (d / "error.txt").read_text()
    assert "Traceback" in text and "NonFiniteError: non-finite training loss" in text
    s = train(compose(tiny_overrides + ["run_name=poison"]), log=quiet)  # resumes from step 3, succeeds
    assert s["step"] == 6 and not (d / "error.txt").exists()


# ------------------------------------------------------------------------------------ security, records


def test_item24_second_owner_fails_at_once_and_stale_lock_is_taken_over(compose, tiny_overrides, tmp_path):
    import json

    run = compose(tiny_overrides + ["run_name=owned", "trainer.max_steps=3"])
    d = Path(run.out_dir) / "owned"
    with RunLock(d, log=quiet):  # another owner (a second open file: flock conflicts even in-process)
        t0 = time.time()
        with pytest.raises(RunDirLockedError, match=f"run directory {d} is in use by pid {os.getpid()}"):
            train(run, log=quiet)
        assert time.time() - t0 < 5  # at once, before any data or model work
    assert sorted(p.name for p in d.iterdir()) == []  # the refused run wrote nothing

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (d / ".lock").write_text(json.dumps({"pid": dead.pid, "host": "h", "started": "then"}))
    logs = []
    s = train(compose(tiny_overrides + ["run_name=owned", "trainer.max_steps=3"]), log=logs.append)
    assert s["step"] == 3
    assert any(f"taking over the stale lock of {d} left by pid {dead.pid}" in m for m in logs), logs
    assert not (d / ".lock").exists()  # released at the end


def test_item25_run_name_cannot_leave_out_dir(tmp_path):
    out = tmp_path / "a" / "out"
    r = subprocess.run([sys.executable, "train.py", "run_name=../../escaped", f"out_dir={out}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "run_name='../../escaped' must stay inside out_dir" in r.stderr, r.stderr
    assert not (tmp_path / "escaped").exists()
    r = subprocess.run([sys.executable, "train.py", "model.n_head=5", f"out_dir={out}", "run_name=bad"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and not (out / "bad").exists()  # an invalid config leaves no run dir


def test_item25_refused_resume_leaves_the_run_dir_as_it_was(compose, tiny_overrides):
    run, d = _finished(compose, tiny_overrides, "refuse")
    before = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    with pytest.raises(ResumeError, match="optim.lr: checkpoint"):
        train(compose(tiny_overrides + ["run_name=refuse", "optim.lr=0.5"]), log=quiet)
    after = {p.relative_to(d): p.read_bytes() for p in d.rglob("*") if p.is_file()}
    assert after == before  # config.yaml, metrics, checkpoints untouched; no error.txt, no lock


def test_item25_finished_run_without_checkpoints_is_refused(compose, tiny_overrides):
    run, d = _finished(compose, tiny_overrides, "nockpt")
    for p in (d / "checkpoints").iterdir():
        p.unlink()
    metrics = (d / "metrics.csv").read_bytes()
    with pytest.raises(RunDirError, match=f"{d} holds the records of a finished run .* resume=false"):
        train(compose(tiny_overrides + ["run_name=nockpt"]), log=quiet)
    assert (d / "metrics.csv").read_bytes() == metrics


@pytest.mark.parametrize("log_every", [1, 5, 10])
def test_item28_each_row_holds_the_values_of_its_step(compose, tiny_overrides, log_every):
    run = compose(tiny_overrides + [f"run_name=le{log_every}", f"trainer.log_every={log_every}",
                                    "trainer.max_steps=12", "trainer.val_every=6"])
    rec = RecordLoss()
    train(run, log=quiet, callbacks=[rec])
    d = Path(run.out_dir) / f"le{log_every}"
    got = train_rows(d)
    assert sorted(got) == list(range(0, 12, log_every))
    assert all(got[n] == rec.losses[n] for n in got), (got, rec.losses)  # exact: the step's own batch
    assert val_steps(d) == [6, 12]  # validation after 6 and 12 optimizer steps


def test_item28_no_row_lost_or_duplicated_across_resume_and_extension(compose, tiny_overrides):
    extra = ["trainer.max_steps=9", "trainer.val_every=3"]
    run = compose(tiny_overrides + ["run_name=rows", *extra])
    d = Path(run.out_dir) / "rows"
    with pytest.raises(Crash):
        train(run, log=quiet, callbacks=[CrashAt(5)])  # checkpoint at 3, rows 0..4 logged
    train(compose(tiny_overrides + ["run_name=rows", *extra]), log=quiet)
    assert sorted(train_rows(d)) == list(range(9)) and val_steps(d) == [3, 6, 9]
    logs = []
    s = train(compose(tiny_overrides + ["run_name=rows", "trainer.max_steps=12", "trainer.val_every=3"]),
              log=logs.append)  # extend the finished run in place
    assert any("at step 9" in m for m in logs) and s["step"] == 12
    assert sorted(train_rows(d)) == list(range(12)) and val_steps(d) == [3, 6, 9, 12]
