"""Progress a researcher can read anywhere: a terminal bar, plain lines in a log, a start-up block.

- ``LineProgress`` (stdout not a terminal: SLURM, CI, ``nohup``, ``| tee``): one line every
  ``print_every(max_steps)`` steps -- a round number (1, 2, 5 x 10^k) chosen so a run prints 20-50
  lines -- and one at every validation, each with step/max, train loss, val bits/byte (only when a
  validation ran since the previous line, so a stale figure is never shown as new), tokens/s, elapsed
  time and ETA. Loss and tokens/s cover the steps since the previous line, not one logged step:
  loss is the mean of the loss each training step returned (the optimized objective, so it includes
  auxiliary terms such as VQ's commitment loss), tokens/s the growth of the module's
  ``tokens_seen`` (per rank, times the world size) over the callback's own clock, validation time
  excluded. Without those, the module's logged
  ``train/loss`` and ``train/tokens_per_sec`` are shown; val bits/byte is the logged ``val/bpb``.
  A figure that is unavailable is left out of the line, never printed as a placeholder. The clock
  starts when this process begins training (a resumed run's ETA extrapolates from its own steps,
  not the killed run's). Rank zero prints.
- ``StepBar`` (a terminal): Lightning's tqdm bar counting optimizer steps against ``max_steps``
  (not batches of an epoch, so never ``Epoch 0/-2``), with named metrics (this step's loss, the
  last val bpb, the logged tok/s),
  no ``v_num`` and no ``*_bar`` duplicates. A terminal that reports no size gets 100 x 24.
- ``progress_callback(run)`` picks one of the two (``trainer.progress_bar``: null = bar in a
  terminal, lines otherwise; true = bar; false = lines).
- ``start_block(...)`` formats the composed choices printed once at start.
- ``early_stopping(run)`` builds Lightning's ``EarlyStopping`` on val bits/byte from
  ``trainer.early_stop`` (patience counted in validations); ``stopped_by`` names why a fit ended.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, TQDMProgressBar
from lightning.pytorch.utilities import rank_zero_only

LOSS, VAL_BPB, TOK_S = "train/loss", "val/bpb", "train/tokens_per_sec"


def print_every(max_steps: int, min_lines: int = 20) -> int:
    """The largest round number (1, 2 or 5 x 10^k) <= max_steps / min_lines, at least 1.

    Consecutive round numbers differ by at most 2.5x, so a run prints between ``min_lines`` and
    2.5 x ``min_lines`` lines (20-50) whenever max_steps >= min_lines; shorter runs print every step.
    """
    target = max_steps / min_lines
    if target < 1:
        return 1
    best = 1
    k = 1
    while k <= target:
        for m in (1, 2, 5):
            if m * k <= target:
                best = m * k
        k *= 10
    return best


def fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _metric(trainer, key: str) -> float | None:
    v = trainer.callback_metrics.get(key)
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class LineProgress(L.Callback):
    """Plain progress lines for logs (see the module docstring)."""

    def __init__(self, every: int | None = None, out: Callable[[str], None] | None = None):
        self.every = every
        self._out = out
        self._pending: int | None = None  # step whose line waits (a validation may follow it)
        self._val_printed = True
        self._t0 = None
        self._step0 = 0
        self._loss_sum = None  # tensor: summed without a device sync per step
        self._loss_n = 0
        self._mark = None  # (time, tokens_seen) at the previous line
        self._loss = self._tps = None  # figures of the pending line
        self._val_t0 = None
        self._val_time = 0.0  # validation seconds inside the current interval (not training time)

    def _emit(self, line: str) -> None:
        if self._out is not None:
            self._out(line)
        else:
            print(line, flush=True)

    def on_train_start(self, trainer, pl_module):
        if self.every is None:
            self.every = print_every(trainer.max_steps)
        self._t0 = time.perf_counter()
        self._step0 = trainer.global_step
        self._mark = (self._t0, getattr(pl_module, "tokens_seen", None))

    def line(self, trainer, step: int | None = None) -> str:
        step = trainer.global_step if step is None else step
        total = trainer.max_steps
        parts = [f"step {step}/{total}" if total and total > 0 else f"step {step}"]
        loss = self._loss if self._loss is not None else _metric(trainer, LOSS)
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if not self._val_printed:
            bpb = _metric(trainer, VAL_BPB)
            if bpb is not None:
                parts.append(f"val bpb {bpb:.4f}")
        tps = self._tps if self._tps is not None else _metric(trainer, TOK_S)
        if tps is not None:
            parts.append(f"{tps:,.0f} tok/s")
        if self._t0 is not None:
            elapsed = time.perf_counter() - self._t0
            done = step - self._step0
            eta = elapsed / done * (total - step) if done > 0 and total and total > 0 else float("nan")
            parts.append(f"elapsed {fmt_duration(elapsed)}, ETA {fmt_duration(eta)}")
        return " | ".join(parts)

    @rank_zero_only
    def _flush(self, trainer) -> None:
        if self._pending is not None:
            self._emit(self.line(trainer, self._pending))
            self._pending = None
            self._val_printed = True

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._flush(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            loss = loss.detach().float()
            self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
            self._loss_n += 1
        step = trainer.global_step
        if step % (self.every or 1) == 0 or step == trainer.max_steps:
            self._close_interval(trainer, pl_module)
            self._pending = step  # printed at the next batch, or merged into a validation line

    def _close_interval(self, trainer, pl_module) -> None:
        """Figures over the steps since the previous line; the next interval starts now."""
        if self._loss_n:
            v = float(self._loss_sum) / self._loss_n
            self._loss = v if math.isfinite(v) else None
        self._loss_sum, self._loss_n = None, 0
        now, tokens = time.perf_counter(), getattr(pl_module, "tokens_seen", None)
        busy = now - self._mark[0] - self._val_time if self._mark is not None else 0.0
        if tokens is not None and self._mark is not None and self._mark[1] is not None and busy > 0:
            # tokens_seen counts this rank's batches; every rank reads its own share
            self._tps = (tokens - self._mark[1]) * trainer.world_size / busy
        self._mark, self._val_time = (now, tokens), 0.0

    def on_validation_start(self, trainer, pl_module):
        self._val_t0 = time.perf_counter()

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        if self._val_t0 is not None:
            self._val_time += time.perf_counter() - self._val_t0
            self._val_t0 = None
        self._val_printed = False
        if self._pending is None:  # a validation outside the step lines (the final one after fit)
            self._pending = trainer.global_step
        self._flush(trainer)

    def on_train_end(self, trainer, pl_module):
        self._flush(trainer)


class StepBar(TQDMProgressBar):
    """A tqdm bar over optimizer steps with named metrics (see the module docstring)."""

    NAMES = {LOSS: "loss", VAL_BPB: "val_bpb", TOK_S: "tok/s"}

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        items = {}
        for key, name in self.NAMES.items():
            v = _metric(trainer, key)
            if v is not None:
                items[name] = f"{v:,.0f}" if key == TOK_S else f"{v:.4f}"
        return items

    @staticmethod
    def _sized(bar):
        # A pty that reports no size (0 x 0: some job runners, `script`, containers) makes tqdm
        # measure -1 rows and draw nothing; give it a fixed 100 x 24 instead.
        cols, rows = shutil.get_terminal_size((0, 0))
        if cols <= 0 or rows <= 0:
            bar.dynamic_ncols = False
            bar.ncols, bar.nrows = 100, 24
        return bar

    def init_train_tqdm(self):
        return self._sized(super().init_train_tqdm())

    def init_validation_tqdm(self):
        return self._sized(super().init_validation_tqdm())

    def on_train_epoch_start(self, trainer, *_):
        bar = self.train_progress_bar
        bar.reset(total=trainer.max_steps if trainer.max_steps > 0 else None)
        bar.initial = 0
        bar.n = trainer.global_step  # a resumed run starts where it stopped
        bar.set_description("train")
        bar.refresh()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        bar = self.train_progress_bar
        n = trainer.global_step
        if bar is not None and self._should_update(n, bar.total):
            bar.n = n
            items = self.get_metrics(trainer, pl_module)
            loss = outputs.get("loss") if isinstance(outputs, dict) else None
            if isinstance(loss, torch.Tensor):  # this step's loss, not the last logged one
                items = {"loss": f"{float(loss):.4f}", **{k: v for k, v in items.items() if k != "loss"}}
            bar.set_postfix(items, refresh=True)


def progress_callback(run, isatty: bool | None = None) -> L.Callback:
    """``StepBar`` in a terminal, ``LineProgress`` otherwise (``trainer.progress_bar`` overrides).

    The Trainer needs ``enable_progress_bar=isinstance(cb, StepBar)``: Lightning refuses a progress
    bar callback when the bar is disabled, and adds its own when none is given.
    """
    choice = run.trainer.progress_bar
    if choice is None:
        choice = sys.stdout.isatty() if isatty is None else isatty
    return StepBar() if choice else LineProgress()


def start_block(run, n_params: int, threads: int, run_dir, choices: dict | None = None) -> str:
    """The composed choices, one per line, printed once at start.

    ``choices`` is Hydra's ``hydra.runtime.choices`` (group -> option) when available, so the model
    line names the option (``micro``) beside its sizes.
    """
    from lmlab.registry import DATA

    choices = choices or {}
    m, t = run.model, run.trainer
    try:
        task = getattr(DATA.get(run.data.name), "task", "lm")
    except Exception:  # noqa: BLE001 - a description must never stop a run
        task = "?"

    def name(group: str, cfg) -> str:
        return str(choices.get(group) or getattr(cfg, "name", None) or "?")

    tok = run.tokenizer
    tok_desc = name("tokenizer", tok)
    if getattr(tok, "vocab_size", None):
        tok_desc += f" (vocab {tok.vocab_size})"
    model_name = choices.get("model")
    sizes = f"d_model {m.d_model}, {m.n_layer} layers, {m.n_head} heads, seq_len {m.seq_len}"
    workers = getattr(run.data, "num_workers", 0)
    batch = getattr(run.data, "batch_size", None)
    es = getattr(t, "early_stop", None)
    steps = f"{t.max_steps} (validate every {t.val_every}"
    steps += f", early stop after {es.patience} validations without improvement)" if es and es.enabled else ")"
    rows = [
        ("task", task),
        ("model", (f"{model_name}: " if model_name else "") + f"{sizes}; {n_params:,} parameters"),
        ("attention", name("attention", run.attention)),
        ("pos", name("pos", run.pos)),
        ("tokenizer", tok_desc),
        ("data", name("data", run.data) + (f" (batch {batch})" if batch else "")),
        ("steps", steps),
        ("precision", f"{t.precision} on {t.accelerator}"),
        ("threads", f"{threads} torch thread(s), {workers} data worker(s)"),
        ("seed", str(run.seed)),
        ("run dir", str(run_dir)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def early_stopping(run) -> EarlyStopping | None:
    """Lightning's EarlyStopping on ``trainer.early_stop.monitor`` (val bits/byte), or None when off.

    Patience counts validations (the callback is checked after validation, not at epoch ends: an
    lmlab run is one long epoch). The Trainer must validate on ``trainer.val_every``.
    """
    es = run.trainer.early_stop
    if not es.enabled:
        return None
    return EarlyStopping(
        monitor=es.monitor, mode="min", patience=es.patience, min_delta=es.min_delta,
        check_on_train_epoch_end=False, check_finite=True, strict=True,
    )


def stopped_by(trainer, early_stop: EarlyStopping | None = None, signal: bool = False) -> str:
    """Why a fit ended, for summary.json: ``signal``, ``early_stop``, ``non_finite`` or ``max_steps``."""
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    if signal:
        return "signal"
    if early_stop is not None:
        reason = early_stop.stopping_reason
        if reason == EarlyStoppingReason.NON_FINITE_METRIC:
            return "non_finite"
        if reason != EarlyStoppingReason.NOT_STOPPED:
            return "early_stop"
    return "max_steps"
