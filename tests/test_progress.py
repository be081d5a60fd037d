"""Progress lines in logs, the terminal bar, the start block, and early stopping (issue 13 items 1, 5)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lmlab.config import EarlyStopConfig
from lmlab.train.progress import (
    LineProgress,
    StepBar,
    early_stopping,
    print_every,
    progress_callback,
    start_block,
    stopped_by,
)


class Tiny(L.LightningModule):
    """Logs the metric names lmlab's modules log; val/bpb follows ``val_curve`` (one per validation)."""

    def __init__(self, val_curve=None):
        super().__init__()
        self.w = torch.nn.Linear(4, 1)
        self.val_curve = list(val_curve or [])
        self.logged_bpb: dict[int, float] = {}
        self.losses: dict[int, float] = {}
        self.count_tokens = False
        self.tokens_seen = 0

    def training_step(self, batch, batch_idx):
        loss = self.w(batch[0]).pow(2).mean()
        self.losses[self.global_step + 1] = loss.item()  # keyed by the step count after this update
        if self.count_tokens:
            self.tokens_seen += 1000
        self.log("train/loss", loss.detach())
        self.log("train/tokens_per_sec", 1234.0)
        return loss

    def validation_step(self, batch, batch_idx):
        pass

    def on_validation_epoch_end(self):
        bpb = self.val_curve.pop(0) if self.val_curve else 2.0 + 1.0 / (1 + self.global_step)
        self.logged_bpb[self.global_step] = bpb
        self.log("val/bpb", bpb)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(10_000, 4)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(4, 4)), batch_size=2)


def _trainer(max_steps, callbacks, val_every=20, bar=False):
    return L.Trainer(
        max_steps=max_steps, val_check_interval=val_every, check_val_every_n_epoch=None,
        num_sanity_val_steps=0, logger=False, enable_checkpointing=False, enable_model_summary=False,
        enable_progress_bar=bar, callbacks=callbacks, accelerator="cpu", log_every_n_steps=1,
    )


def _run(progress_bar=None):
    return SimpleNamespace(trainer=SimpleNamespace(progress_bar=progress_bar))


@pytest.mark.parametrize("max_steps", [20, 21, 60, 99, 100, 250, 600, 1000, 1999, 5000, 12345, 100_000])
def test_print_every_is_round_and_gives_20_to_50_lines(max_steps):
    n = print_every(max_steps)
    assert re.fullmatch(r"[125]0*", str(n)), n
    assert 20 <= max_steps // n <= 50


def test_short_runs_print_every_step():
    assert print_every(7) == 1


def test_lines_when_stdout_is_not_a_terminal(capsys):
    cb = progress_callback(_run())  # capsys: stdout is not a tty
    assert isinstance(cb, LineProgress)
    module = Tiny()
    del module.tokens_seen  # a module without a token count: the logged train/tokens_per_sec is shown
    _trainer(60, [cb]).fit(module)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    val_steps = {20, 40, 60}
    assert 20 <= len(lines) <= 50 + len(val_steps)
    steps = [int(re.match(r"step (\d+)/60", x).group(1)) for x in lines]
    assert steps == sorted(set(steps)), "one line per step, in order (a validation line merges with its step)"
    assert steps[-1] == 60
    for x in lines:
        assert re.search(r"\| loss \d+\.\d{4} ", x), x
        assert "1,234 tok/s" in x, x
        assert re.search(r"elapsed \S+, ETA \S+$", x), x
    for x, s in zip(lines, steps):
        if s in val_steps:  # fresh val figure, the one logged at that validation
            assert f"val bpb {module.logged_bpb[s]:.4f}" in x, x
        else:
            assert "val bpb" not in x, x
    assert lines[-1].endswith("ETA 0s")
    # loss: the mean over the steps since the previous line, not one (possibly stale) logged step
    prev = 0
    for x, s in zip(lines, steps):
        want = sum(module.losses[i] for i in range(prev + 1, s + 1)) / (s - prev)
        assert f"loss {want:.4f}" in x, (x, want)
        prev = s


def test_tokens_per_sec_measured_from_the_modules_token_count(capsys):
    module = Tiny()
    module.count_tokens = True
    _trainer(40, [LineProgress(every=10)]).fit(module)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("step ")]
    assert len(lines) == 4
    for x in lines:
        tps = float(re.search(r"\| ([\d,]+) tok/s", x).group(1).replace(",", ""))
        assert tps > 0 and tps != 1234, x  # 1000 tokens per step over the callback's clock


def test_bar_counts_steps_with_named_metrics(capsys):
    cb = progress_callback(_run(progress_bar=True))
    assert isinstance(cb, StepBar)
    _trainer(30, [cb], val_every=10, bar=True).fit(Tiny())
    out = capsys.readouterr().out
    assert "30/30" in out and "train" in out
    assert "loss=" in out and "val_bpb=" in out and "tok/s=" in out
    assert "v_num" not in out and "Epoch" not in out and "_bar" not in out and "-2" not in out


def test_early_stop_counts_validations_without_improvement():
    run = SimpleNamespace(trainer=SimpleNamespace(early_stop=EarlyStopConfig(enabled=True, patience=2, min_delta=0.01)))
    es = early_stopping(run)
    # improves at 10 and 20 (by more than min_delta), then by less than min_delta twice -> stop at 40
    trainer = _trainer(200, [es], val_every=10)
    trainer.fit(Tiny(val_curve=[3.0, 2.5, 2.495, 2.49, 1.0]))
    assert trainer.global_step == 40
    assert stopped_by(trainer, es) == "early_stop"


def test_early_stop_off_by_default_and_max_steps_reason():
    run = SimpleNamespace(trainer=SimpleNamespace(early_stop=EarlyStopConfig()))
    assert early_stopping(run) is None
    trainer = _trainer(20, [], val_every=10)
    trainer.fit(Tiny(val_curve=[3.0, 3.0]))
    assert trainer.global_step == 20
    assert stopped_by(trainer, None) == "max_steps"
    assert stopped_by(trainer, None, signal=True) == "signal"


def test_early_stop_config_is_validated(compose):
    from lmlab.config import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.early_stop.patience=0"):
        compose(["trainer.early_stop.enabled=true", "trainer.early_stop.patience=0"])
    run = compose(["trainer.early_stop.enabled=true", "trainer.early_stop.patience=4"])
    assert run.trainer.early_stop.patience == 4


def test_start_block_names_every_choice(compose):
    run = compose(["attention=mla", "pos=rope2d", "model=nano", "data=pystdlib", "trainer.max_steps=77"])
    text = start_block(run, n_params=123456, threads=3, run_dir="outputs/x", choices={"model": "nano"})
    for label, value in [("task", "lm"), ("model", "nano: "), ("attention", "mla"), ("pos", "rope2d"),
                         ("tokenizer", "sentencepiece"), ("data", "pystdlib"), ("steps", "77"),
                         ("precision", "32-true"), ("threads", "3 torch thread(s)"), ("run dir", "outputs/x")]:
        assert re.search(rf"^\s+{label}\s+.*{re.escape(value)}", text, re.M), (label, text)
    assert "123,456 parameters" in text


def test_wandb_credentials_read_from_env_and_netrc(tmp_path, monkeypatch):
    from lmlab.train.logging import wandb_logged_in

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    netrc = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(netrc))
    assert not wandb_logged_in()  # no file
    netrc.write_text("machine example.org login user password x\n")
    netrc.chmod(0o600)
    assert not wandb_logged_in()  # another host
    netrc.write_text("machine api.wandb.ai login user password k" + "0" * 39 + "\n")
    assert wandb_logged_in()
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    monkeypatch.setenv("WANDB_API_KEY", "k")
    assert wandb_logged_in()


@pytest.mark.slow
def test_wandb_offline_run_prints_no_banner_or_deprecation(tmp_path, monkeypatch, capfd):
    import warnings

    import wandb

    from lmlab.train.logging import wandb_logger

    monkeypatch.delenv("WANDB_SILENT", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    run = SimpleNamespace(logger=SimpleNamespace(mode="auto", project="p", entity=None),
                          sweep_name="s", run_name="r")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wb = wandb_logger(run, str(tmp_path), {"a": 1})
        try:
            assert wb.experiment.settings.mode == "offline"  # auto without credentials
            wb.log_metrics({"x": 1.0}, step=1)
        finally:
            wandb.finish()
    out = capfd.readouterr()
    assert "wandb:" not in out.out + out.err, out
    assert not [w for w in caught if "deprecat" in str(w.message).lower()]


@pytest.mark.slow
def test_bar_draws_in_a_pty_that_reports_no_size():
    """A fresh pty is 0 x 0; tqdm alone reads -1 rows there and draws nothing (issue 13)."""
    import os
    import pty
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    child = ("import sys; sys.path.insert(0, 'tests'); import test_progress as tp; "
             "from lmlab.train.progress import progress_callback; cb = progress_callback(tp._run()); "
             "assert type(cb).__name__ == 'StepBar', cb; tp._trainer(5, [cb], val_every=5, bar=True).fit(tp.Tiny())")
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    p = subprocess.Popen([sys.executable, "-c", child], stdout=slave, stderr=subprocess.PIPE, cwd=root, env=env)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        out += chunk
    err = p.communicate(timeout=120)[1]
    os.close(master)
    assert p.returncode == 0, err.decode()[-2000:]
    text = out.decode(errors="replace")
    assert "train: 100%" in text and "5/5" in text and "loss=" in text, text[-1000:]
