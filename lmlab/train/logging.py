"""Run-directory metrics: a CSV logger that survives resume, and the optional W&B logger.

Rows carry the step their values were computed at (``TaskModule.write_row``). Lightning's CSVLogger
deletes an existing ``metrics.csv`` when a run restarts; ours keeps the rows the resumed run will not
write again: rows before the resume step R, plus the validation row at R (computed from the very
weights of the checkpoint; if the resumed run validates at R again, the new row replaces it). Rows a
killed run logged after its checkpoint are dropped (the resumed run redoes those steps), so every step
appears once and one file holds the whole curve.
Rows are appended as they are logged (a kill loses none that the checkpoint covers).

W&B (``wandb_logger``): the run id is kept in ``wandb_id.txt`` in the run directory, so a resumed run
continues the same W&B run (``resume="allow"``). W&B is started up front; if it cannot start, or a
later log/sync call fails, one warning is printed and training continues with the CSV only.
"""

from __future__ import annotations

import csv
import os
import uuid
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class RunCSVLogger(Logger):
    def __init__(self, run_dir: str, resume_step: int | None = None):
        """``resume_step``: the step of the checkpoint resumed from (None: a fresh start, no old rows)."""
        super().__init__()
        self.resume_step = resume_step
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict] = []
        self.keys: list[str] = ["step"]
        if self.path.exists():
            with open(self.path, newline="") as f:
                old = list(csv.DictReader(f))

            def kept(r: dict) -> bool:
                if resume_step is None or not r.get("step"):
                    return False
                step = int(r["step"])
                return step < resume_step or (step == resume_step and _is_val(r))

            keep = [r for r in old if kept(r)]
            self.rows = keep
            for r in keep:
                for k in r:
                    if k not in self.keys:
                        self.keys.append(k)
            self._write_all()
        self._pending: list[dict] = []

    @property
    def name(self) -> str:
        return "csv"

    @property
    def version(self) -> str:
        return ""

    @property
    @rank_zero_experiment
    def experiment(self):
        return self

    @rank_zero_only
    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        row = {"step": step}
        for k, v in metrics.items():
            row[k] = v.item() if hasattr(v, "item") else v
        if step == self.resume_step and _is_val(row):
            old = [r for r in self.rows if _is_val(r) and r.get("step") is not None and int(r["step"]) == step]
            if old:  # validated again at the resume step: the new row replaces the kept one
                self.rows = [r for r in self.rows if not any(r is o for o in old)]
                self._write_all()
        self._pending.append(row)
        self.save()  # on disk at once: a checkpoint never covers a row the file lacks

    def _write_all(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.keys, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)

    @rank_zero_only
    def save(self) -> None:
        if not self._pending:
            return
        new = [k for r in self._pending for k in r if k not in self.keys]
        self.rows.extend(self._pending)
        if new or not self.path.exists():
            for k in new:
                if k not in self.keys:
                    self.keys.append(k)
            self._write_all()
        else:
            with open(self.path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self.keys, extrasaction="ignore").writerows(self._pending)
        self._pending = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()


class SafeWandbLogger(WandbLogger):
    """Lightning's WandbLogger whose calls never stop training: the first failure prints one warning
    and the logger goes quiet (the CSV keeps every row)."""

    broken = False

    def _guard(self, what: str, fn, *a, **k):
        if self.broken:
            return None
        try:
            return fn(*a, **k)
        except Exception as e:  # noqa: BLE001 - W&B trouble must never stop a run
            self.broken = True
            print(f"warning: W&B {what} failed ({type(e).__name__}: {e}); continuing with CSV only")
            return None

    @rank_zero_only
    def log_metrics(self, metrics, step=None) -> None:
        self._guard("logging", super().log_metrics, metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        self._guard("logging", super().log_hyperparams, params)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback) -> None:
        self._guard("checkpoint bookkeeping", super().after_save_checkpoint, checkpoint_callback)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self._guard("finalize", super().finalize, status)

    def set_summary(self, values: dict) -> None:
        """Final figures into the W&B run summary (not a one-point history)."""
        self._guard("summary", lambda: self.experiment.summary.update(values))


def _is_val(row: dict) -> bool:
    return any(str(k).startswith("val/") and v not in (None, "") for k, v in row.items())


def wandb_logger(run, run_dir: str, config: dict):
    """A started W&B logger that continues the run directory's W&B run (``wandb_id.txt``), offline unless
    the user is logged in; None (with one warning) if W&B cannot start."""
    try:
        # W&B's banner and sync hints would interleave with lmlab's progress lines; errors still print
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        mode = run.logger.mode
        if mode == "auto":
            mode = "online" if wandb_logged_in() else "offline"
        id_file = Path(run_dir) / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else ""
        run_id = run_id or uuid.uuid4().hex[:12]  # W&B ids: lowercase letters and digits
        logger = SafeWandbLogger(
            project=run.logger.project, entity=run.logger.entity, group=run.sweep_name,
            name=run.run_name, save_dir=run_dir, config=config, mode=mode, id=run_id, resume="allow",
            # an unreachable server fails the start after 30 s (W&B's default: 90) instead of hanging
            settings=wandb.Settings(silent=True, quiet=True, init_timeout=30),
        )
        # Lightning always passes anonymous=None, which W&B >= 0.19 answers with a deprecation warning
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
        _ = logger.experiment  # start now, so a failure is caught here and not in the middle of training
        id_file.write_text(run_id + "\n")
        return logger
    except Exception as e:  # noqa: BLE001 - W&B trouble must never stop a run
        print(f"warning: W&B could not start ({type(e).__name__}: {e}); continuing with CSV only")
        try:
            import wandb

            wandb.finish()
        except Exception:  # noqa: BLE001
            pass
        return None


def wandb_logged_in() -> bool:
    """Whether W&B has credentials, read without W&B's deprecated ``wandb.api`` (which warns) and
    without ``wandb.login`` (which may prompt or reach the network): ``WANDB_API_KEY``, or a netrc
    entry for the W&B host that ``wandb login`` writes."""
    import netrc
    from urllib.parse import urlparse

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return bool(netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False
