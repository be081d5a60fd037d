"""End to end: a tiny run writes a complete run directory; a crashed run resumes bit for bit;
non-finite losses stop before the update; the CLI reports config errors and sweeps."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lmlab.train.run import train

ROOT = Path(__file__).resolve().parent.parent


from conftest import Crash, CrashAt  # noqa: E402  (one definition, tests/conftest.py)


class PoisonAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            forward = pl_module.model.forward
            pl_module.model.forward = lambda *a, **k: forward(*a, **k) * float("nan")


def losses(run_dir):
    with open(Path(run_dir) / "metrics.csv") as f:
        return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f) if r.get("train/loss")}


def test_run_writes_complete_run_dir_and_rerun_resumes(compose, tiny_overrides, tmp_path):
    run = compose(tiny_overrides)
    s = train(run, log=lambda *_: None)
    d = Path(run.out_dir) / run.run_name
    for f in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.ckpt"):
        assert (d / f).exists(), f
    summary = json.loads((d / "summary.json").read_text())
    for k in ("val_loss", "val_bpb", "train_loss", "step", "tokens_seen", "tokens_per_sec", "n_params",
              "wall_time_s", "train_bytes_per_token", "val_bytes_per_token"):
        assert k in summary, k
    assert summary["step"] == 6 and summary["tokens_seen"] == 6 * 4 * 32
    assert math_close(summary["val_bpb"], summary["val_loss"] / summary["val_bytes_per_token"] / 0.6931471805599453)
    assert sorted(p.name for p in (d / "checkpoints").glob("step-*.ckpt")) == ["step-3.ckpt", "step-6.ckpt"]
    # the same command again resumes from last.ckpt: nothing left to train, same weights, same summary step
    s2 = train(compose(tiny_overrides), log=lambda *_: None)
    assert s2["step"] == 6 and s2["tokens_seen"] == s["tokens_seen"]


def math_close(a, b):
    return abs(a - b) < 1e-6 * max(1.0, abs(b))


@pytest.mark.slow
def test_crash_and_resume_is_bit_for_bit(compose, tiny_overrides, tmp_path):
    extra = ["trainer.max_steps=10", "trainer.val_every=4", "tokenizer.sample=true", "model.dropout=0.1",
             "trainer.deterministic=true"]
    ref = compose(tiny_overrides + extra + ["run_name=ref"])
    train(ref, log=lambda *_: None)

    run = compose(tiny_overrides + extra + ["run_name=crashy"])
    with pytest.raises(Crash):
        train(run, log=lambda *_: None, callbacks=[CrashAt(6)])  # last checkpoint at step 4
    assert max(losses(Path(run.out_dir) / "crashy")) == 5
    train(compose(tiny_overrides + extra + ["run_name=crashy"]), log=lambda *_: None)

    a, b = losses(Path(ref.out_dir) / "ref"), losses(Path(run.out_dir) / "crashy")
    assert a == b and max(a) == 9  # every logged step, including 5..9 redone after the crash
    wa = torch.load(Path(ref.out_dir) / "ref/checkpoints/last.ckpt", weights_only=True)
    wb = torch.load(Path(run.out_dir) / "crashy/checkpoints/last.ckpt", weights_only=True)
    for k in wa["state_dict"]:
        assert torch.equal(wa["state_dict"][k], wb["state_dict"][k]), k
    oa, ob = wa["optimizer_states"][0], wb["optimizer_states"][0]
    parts = [(oa[p], ob[p]) for p in ("muon", "adamw")] if "muon" in oa else [(oa, ob)]  # optim=muon: two parts
    for pa, pb in parts:
        sa, sb = pa["state"], pb["state"]
        assert sa and sa.keys() == sb.keys()
        for i in sa:  # every buffer (AdamW's moments, Muon's momentum) equal after the resume
            assert sa[i].keys() == sb[i].keys()
            assert all(torch.equal(v, sb[i][k]) for k, v in sa[i].items() if torch.is_tensor(v))


def test_resume_with_other_worker_count_is_refused(compose, tiny_overrides):
    train(compose(tiny_overrides + ["run_name=w"]), log=lambda *_: None)
    with pytest.raises(ValueError, match="data.num_workers: checkpoint 0, this run 1"):
        train(compose(tiny_overrides + ["run_name=w", "data.num_workers=1", "trainer.max_steps=8"]),
              log=lambda *_: None)


def test_resume_with_another_model_is_refused_naming_every_difference(compose, tiny_overrides):
    train(compose(tiny_overrides + ["run_name=m"]), log=lambda *_: None)
    with pytest.raises(ValueError, match=r"(?s)model.d_model: checkpoint 32, this run 64.*tokenizer.vocab_size"):
        train(compose(tiny_overrides + ["run_name=m", "model.d_model=64", "tokenizer.vocab_size=300"]),
              log=lambda *_: None)
    s = train(compose(tiny_overrides + ["run_name=m", "model.d_model=64", "resume=false"]), log=lambda *_: None)
    assert s["step"] == 6


def test_resume_true_without_checkpoint_names_the_folder(compose, tiny_overrides):
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*fresh/checkpoints"):
        train(compose(tiny_overrides + ["run_name=fresh", "resume=true"]), log=lambda *_: None)


def test_non_finite_loss_stops_before_the_update(compose, tiny_overrides):
    run = compose(tiny_overrides + ["run_name=poisoned"])
    with pytest.raises(FloatingPointError, match="non-finite training loss .* at step 3"):
        train(run, log=lambda *_: None, callbacks=[PoisonAt(3)])
    ckpts = sorted(p.name for p in (Path(run.out_dir) / "poisoned/checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step-3.ckpt"]  # nothing written after the poisoned step


def test_cli_config_error_is_one_clear_message(tmp_path):
    r = subprocess.run([sys.executable, "train.py", "model.n_head=5", "+model.bogus=1", f"out_dir={tmp_path}"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "model.n_head=5 does not divide model.d_model=256" in r.stderr
    assert "model.bogus: unknown key" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_multirun_makes_one_dir_per_job_and_survives_a_failing_job(tiny_overrides, tmp_path):
    drop = ("trainer.max_steps", "trainer.val_every", "model.n_head")
    args = [a for a in tiny_overrides if not a.startswith(drop)]
    r = subprocess.run(  # n_head=5 does not divide d_model=32: that job fails, the others run
        [sys.executable, "train.py", "-m", "model.n_head=2,5,4", "trainer.max_steps=2", "trainer.val_every=2",
         "sweep_name=sw", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 1, r.stderr[-2000:]  # the sweep reports its failed job after the others ran
    jobs = sorted(p.name for p in (tmp_path / "sw").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(jobs) == 3, jobs
    ok = [j for j in jobs if (tmp_path / "sw" / j / "summary.json").exists()]
    failed = [j for j in jobs if (tmp_path / "sw" / j / "error.txt").exists()]
    assert len(ok) == 2 and len(failed) == 1
    assert "model.n_head=5" in (tmp_path / "sw" / failed[0] / "error.txt").read_text()
    failed_lines = [ln for ln in r.stderr.splitlines() if ln.strip().startswith("FAILED ")]
    assert len(failed_lines) == 1 and str(tmp_path / "sw" / failed[0]) in failed_lines[0], r.stderr[-2000:]


@pytest.mark.slow
def test_wandb_offline_run_finishes_even_when_training_raises(compose, tiny_overrides, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    run = compose(tiny_overrides + ["run_name=wb", "logger=wandb", "trainer.max_steps=4"])
    with pytest.raises(FloatingPointError):
        train(run, log=lambda *_: None, callbacks=[PoisonAt(3)])
    assert wandb.run is None  # wandb.finish() ran in the finally
    assert list((Path(run.out_dir) / "wb" / "wandb").glob("offline-run-*"))


class SigtermAt(L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_checkpoints_at_the_step_boundary_and_resumes(compose, tiny_overrides):
    from lmlab.train.checkpointing import StoppedBySignal

    run = compose(tiny_overrides + ["run_name=term", "trainer.max_steps=8", "trainer.val_every=100"])
    with pytest.raises(StoppedBySignal, match="stopped by SIGTERM at step 4"):
        train(run, log=lambda *_: None, callbacks=[SigtermAt(3)])
    d = Path(run.out_dir) / "term"
    assert torch.load(d / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 4
    assert not (d / "summary.json").exists()  # an unfinished run gets no summary
    s = train(compose(tiny_overrides + ["run_name=term", "trainer.max_steps=8", "trainer.val_every=100"]),
              log=lambda *_: None)
    assert s["step"] == 8 and s["tokens_seen"] == 8 * 4 * 32


def test_probe_runs_at_the_end_of_training(compose, tiny_overrides):
    run = compose(tiny_overrides + ["run_name=probed", "probe.enabled=true", "probe.n_prompts=4",
                                    "probe.context_tokens=16", "probe.max_target_bytes=8", "probe.heal_k=[1]"])
    s = train(run, log=lambda *_: None)
    d = Path(run.out_dir) / "probed"
    res = json.loads((d / "probe.json").read_text())
    assert res and any(k.startswith("probe/") for k in s)
    assert json.loads((d / "summary.json").read_text()).keys() >= {k for k in s if k.startswith("probe/")}
