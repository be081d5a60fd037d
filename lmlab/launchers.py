"""What a training job needs to know about the Hydra launcher that started it (issue 11 item 6).

Two things, both used by train.py:

- ``threads_per_job``: torch intra-op threads for one job when the launcher runs several jobs at
  once on this machine, so that jobs × threads never exceeds the cores. ``hydra/launcher=joblib``
  with ``n_jobs`` = k > 1 (joblib's negative values count back from the cores: -1 = all) gives each
  job cores // k threads (at least 1); the submitit launchers give ``cpus_per_task`` when it is set
  (SLURM's allocation, which ``os.cpu_count()`` does not see). Only when ``trainer.num_threads`` is
  null: an explicit value always wins. "Cores" are the CPUs this process may run on (its affinity).
- ``SubmititRequeue``: under submitit (``hydra/launcher=submitit_slurm`` or ``submitit_local``), the
  signal submitit sends before a time limit or on preemption (USR2 unless $SUBMITIT_PREEMPT_SIGNAL
  says otherwise) first makes lmlab write ``checkpoints/last.ckpt`` at the next step boundary, then
  hands the signal to submitit's own handler, which resubmits the same Hydra job and exits. The
  requeued job runs in the same run directory (run names come from the overrides), so
  ``resume=auto`` continues from that checkpoint: no step is lost or repeated. Outside submitit it
  does nothing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Optional

import lightning as L


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_job(launcher, cores: Optional[int] = None) -> Optional[tuple[int, str]]:
    """(threads, why) for one job of the sweep whose ``hydra.launcher`` config is ``launcher``, or
    None when the launcher runs one job at a time (keep lmlab's default)."""
    if launcher is None:
        return None
    target = str(launcher.get("_target_", ""))
    cores = cores or available_cores()
    if target.endswith("JoblibLauncher"):
        n_jobs = int(launcher.get("n_jobs", -1))
        jobs = cores + 1 + n_jobs if n_jobs < 0 else n_jobs  # joblib: -1 all cores, -2 all but one
        if jobs <= 1:
            return None
        return max(1, cores // jobs), f"hydra/launcher=joblib runs {jobs} jobs at once on {cores} cores"
    if "hydra_submitit_launcher" in target and launcher.get("cpus_per_task"):
        n = int(launcher.cpus_per_task)
        return n, f"hydra/launcher={'submitit_slurm' if 'Slurm' in target else 'submitit_local'} cpus_per_task={n}"
    return None


def under_submitit() -> bool:
    return bool(os.environ.get("SUBMITIT_EXECUTOR"))


def preempt_signal() -> signal.Signals:
    """The signal submitit uses for time-outs and preemption (its $SUBMITIT_PREEMPT_SIGNAL, USR2)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG"))


class SubmititRequeue(L.Callback):
    """Checkpoint at the next step boundary on submitit's preemption signal, then let submitit requeue."""

    def __init__(self, ckpt_dir: Path, log=print):
        self.ckpt_dir = Path(ckpt_dir)
        self._log = log
        self.signum = preempt_signal()
        self.requested = False
        self._previous = None

    def on_train_start(self, trainer, pl_module):
        try:
            self._previous = signal.signal(self.signum, self._handler)
        except ValueError:  # not the main thread: leave submitit's handler in place
            self._previous = None

    def _handler(self, signum, frame):
        self.requested = True  # act between steps, never inside one

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.requested:
            return
        self.requested = False
        trainer.save_checkpoint(str(self.ckpt_dir / "last.ckpt"))
        self._log(f"{self.signum.name}: checkpoint written at step {trainer.global_step}; handing over to submitit")
        previous, self._previous = self._previous, None
        signal.signal(self.signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(self.signum, None)  # submitit: resubmit this job, then exit
        else:  # no submitit handler to hand over to: stop cleanly, rerunning resumes
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module):
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None
