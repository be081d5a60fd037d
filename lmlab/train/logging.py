"""Run-directory metrics: a CSV logger that survives resume, and the optional W&B logger.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when a run restarts; ours keeps the rows
up to the resumed step (dropping rows a killed run logged after its last checkpoint), so one file
holds the whole curve of a resumed run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only


class RunCSVLogger(Logger):
    def __init__(self, run_dir: str, resume_step: int | None = None):
        super().__init__()
        self.path = Path(run_dir) / "metrics.csv"
        self.rows: list[dict] = []
        self.keys: list[str] = ["step"]
        if self.path.exists():
            with open(self.path, newline="") as f:
                old = list(csv.DictReader(f))
            keep = [r for r in old if resume_step is not None and r.get("step") and int(r["step"]) <= resume_step]
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
        self._pending.append(row)

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


def wandb_logger(run, run_dir: str, config: dict):
    """A WandbLogger, offline unless the user is logged in; None (with a warning) if W&B can't start."""
    try:
        # W&B's banner and sync hints would interleave with lmlab's progress lines; errors still print
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        mode = run.logger.mode
        if mode == "auto":
            mode = "online" if wandb_logged_in() else "offline"
        logger = WandbLogger(
            project=run.logger.project, entity=run.logger.entity, group=run.sweep_name,
            name=run.run_name, save_dir=run_dir, config=config, mode=mode,
            settings=wandb.Settings(silent=True, quiet=True),
        )
        # Lightning always passes anonymous=None, which W&B >= 0.19 answers with a deprecation warning
        init = getattr(logger, "_wandb_init", None)
        if isinstance(init, dict) and init.get("anonymous") is None:
            init.pop("anonymous", None)
        return logger
    except Exception as e:  # noqa: BLE001 - W&B trouble must never stop a run
        print(f"warning: W&B could not start ({e}); continuing with CSV only")
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
