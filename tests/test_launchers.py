"""Parallel and cluster sweeps through Hydra's launchers (issue 11 item 6): threads per job, a 2-job
sweep through joblib and through submitit_local, and the submitit requeue hook's checkpoint."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import yaml
from omegaconf import OmegaConf

from lmlab.launchers import SubmititRequeue, available_cores, threads_per_job

ROOT = Path(__file__).resolve().parent.parent
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
LOCAL = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


def launcher(target, **kw):
    return OmegaConf.create({"_target_": target, **kw})


def test_threads_per_job_divides_the_cores():
    assert threads_per_job(launcher(JOBLIB, n_jobs=2), cores=8)[0] == 4
    assert threads_per_job(launcher(JOBLIB, n_jobs=3), cores=8)[0] == 2
    assert threads_per_job(launcher(JOBLIB, n_jobs=-1), cores=8)[0] == 1  # joblib: one job per core
    assert threads_per_job(launcher(JOBLIB, n_jobs=-2), cores=8)[0] == 1  # 7 jobs
    assert threads_per_job(launcher(JOBLIB, n_jobs=16), cores=2)[0] == 1  # never 0
    assert threads_per_job(launcher(JOBLIB, n_jobs=1), cores=8) is None  # serial: keep the default
    assert threads_per_job(launcher(LOCAL, cpus_per_task=3), cores=8)[0] == 3
    assert threads_per_job(launcher(LOCAL, cpus_per_task=None), cores=8) is None
    basic = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
    assert threads_per_job(launcher(basic), cores=8) is None


def sweep(tiny_overrides, tmp_path, launcher_args, timeout=600, workers=0):
    drop = ("trainer.max_steps", "trainer.val_every", "data.num_workers")
    args = [a for a in tiny_overrides if not a.startswith(drop)]
    r = subprocess.run(
        [sys.executable, "train.py", "-m", *launcher_args, "attention=mha,gqa", "trainer.max_steps=3",
         "trainer.val_every=3", "sweep_name=sw", f"data.num_workers={workers}", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    jobs = sorted(p for p in (tmp_path / "sw").iterdir() if p.is_dir() and not p.name.startswith("."))
    assert [j.name.split(",")[0] for j in jobs] == ["attention=gqa", "attention=mha"]
    for j in jobs:
        summary = json.loads((j / "summary.json").read_text())
        assert summary["step"] == 3 and summary["val_bpb"] > 0, summary
    return r, [yaml.safe_load((j / "config.yaml").read_text()) for j in jobs]


@pytest.mark.slow
def test_two_job_sweep_through_joblib_shares_the_cores(tiny_overrides, tmp_path):
    import hydra_plugins.hydra_joblib_launcher  # noqa: F401  (the [launchers] extra; .ci/run installs it)
    # with a tokenizer worker: inside a joblib (loky) job the DataLoader must start its worker (it did not
    # before lmlab named the "fork" context: loky's launcher cannot start torch's worker processes)
    r, configs = sweep(tiny_overrides, tmp_path, ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], workers=1)
    expected = max(1, available_cores() // 2)
    assert [c["trainer"]["num_threads"] for c in configs] == [expected, expected]


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local(tiny_overrides, tmp_path):
    import hydra_plugins.hydra_submitit_launcher  # noqa: F401  (the [launchers] extra)
    _, configs = sweep(tiny_overrides, tmp_path, ["hydra/launcher=submitit_local"])
    assert [c["trainer"]["num_threads"] for c in configs] == [1, 1]  # cpus_per_task=1 in the yaml
    assert list((tmp_path / "sw" / ".submitit").iterdir())  # submitit really ran the jobs


class RaiseAt(L.Callback):
    """Deliver ``signum`` to this process during step ``step`` (as SLURM would, before a time-out)."""

    def __init__(self, step, signum):
        self.step, self.signum = step, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            signal.raise_signal(self.signum)


@pytest.mark.slow
def test_preemption_signal_checkpoints_then_hands_over_to_submitit(compose, tiny_overrides, monkeypatch):
    from lmlab.train.run import train

    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    handed = []

    class Requeued(Exception):  # what submitit's handler does: resubmit, then leave the process
        pass

    def submitit_handler(signum, frame):
        handed.append(signum)
        raise Requeued

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        run = compose(tiny_overrides + ["run_name=pre", "trainer.max_steps=6", "trainer.val_every=100"])
        ckpt = Path(run.out_dir) / "pre" / "checkpoints"
        with pytest.raises(Requeued):
            train(run, log=lambda *_: None, callbacks=[SubmititRequeue(ckpt, log=lambda *_: None),
                                                      RaiseAt(2, signal.SIGUSR2)])
        assert handed == [signal.SIGUSR2]
        import torch

        assert torch.load(ckpt / "last.ckpt", weights_only=False)["global_step"] == 3  # the step it was in
        summary = train(run, log=lambda *_: None)  # the requeued job: same run dir, resume=auto
        assert summary["step"] == 6
    finally:
        signal.signal(signal.SIGUSR2, previous)
