"""What every task shares: its config, the task object ``train()`` drives, and one LightningModule base.

A *task* (``task=NAME``, ``conf/task/NAME.yaml``) is how one kind of data is learned: it builds the
DataModule and the LightningModule, supplies the loss and the validation metrics, and adds its own
fields to ``summary.json``. Adding a task is one file in this folder (a ``Task`` subclass registered
with ``@TASK.register(NAME)`` and its ``TaskModule``) plus one yaml.

``TaskModule`` holds everything that must not differ between tasks; subclasses supply hooks only:

- ``step_loss(batch)`` -> ``StepLoss`` (the reported loss, the optimized total, tokens and bytes);
- ``step_metrics(batch, out)`` -> extra ``train/*`` values, computed only on logged steps;
- ``val_step(batch)`` / ``val_metrics()`` (must hold ``loss`` and ``bpb``) / ``on_val_metrics(m)``;
- ``extra_state()`` / ``load_extra_state(state)``: task fields of the checkpoint (tensors and plain data).

Guarantees of the base (tests: test_tasks.py, test_train.py, test_multimodal_train.py):

- Non-finite loss or gradient norm raises ``NonFiniteError`` naming the step *before* the optimizer
  step, so the parameters stay those after the previous step and no poisoned checkpoint is written.
- Gradients are clipped to ``optim.grad_clip`` (the same norm serves the non-finite check).
- Randomness in a training step (dropout) comes from a seed derived from (run seed, step), never from
  what the global RNG went through before (data-loader start-ups and validations consume global draws
  differently in a resumed run). With the data position in the checkpoint, a resumed run repeats the
  uninterrupted one bit for bit. This is the only resume scheme: no RNG state is saved.
- Logged rows (``metrics.csv``, W&B) carry the step their values were computed at (``write_row``):
  a ``train/*`` row at step N holds the batch trained at ``global_step`` N; rows are written every
  ``trainer.log_every`` steps (N % log_every == 0), validation rows at each validation.
- Counters (batches, tokens, bytes seen; tokens/s measured between logged steps) and the validation
  history travel in the checkpoint's ``lmlab`` section (format ``lmlab.train.checkpoint.FORMAT``),
  which holds tensors and plain data only; ``on_load_checkpoint`` refuses (``ResumeError``) a
  checkpoint whose seed, worker count or world size differs from this run's.
- Rank awareness: the world size is recorded in the checkpoint and a resume under another is
  refused (each rank's data share depends on it); the training streams shard by rank and worker.
  Validation sums go through ``reduce_sum`` (an all-reduce under DDP/FSDP) before any division.
- ``train/mfu`` is logged beside ``train/tokens_per_sec`` when the device's peak is known (``mfu``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Optional

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from lmlab.errors import NonFiniteError, ResumeError


@dataclass
class TaskConfig:
    name: str = "lm"

    def check(self, run) -> list[str]:
        """The data source must feed this task (``DataSource.task``); say which to pick otherwise."""
        from lmlab.registry import DATA

        data = getattr(run, "data", None)
        if data is None or data.name not in DATA:
            return []
        feeds = DATA.get(data.name).task
        if feeds == self.name:
            return []
        return [f"task={self.name} cannot train data={data.name}: that source feeds task={feeds} "
                f"(add task={feeds}, or choose a data source for task={self.name})"]


@dataclass
class StepLoss:
    loss: torch.Tensor  # the figure reported as train/loss
    total: torch.Tensor  # what is optimized (loss + penalties + auxiliary losses)
    tokens: int  # target tokens in the batch (throughput, tokens_seen)
    bytes: int = 0  # UTF-8 bytes those targets stand for (0 when not text)
    aux: Optional[torch.Tensor] = None


class TaskModule(L.LightningModule):
    """The one LightningModule base (see the module docstring); ``self.model`` is the task's network."""

    def __init__(self, run, tokenizer=None):
        super().__init__()
        self.run = run
        self.tokenizer = tokenizer
        self.batches_seen = 0
        self.tokens_seen = 0
        self.train_bytes = 0
        self._t_last: Optional[float] = None
        self._tok_since = 0
        self.tokens_per_sec = float("nan")
        self.last_train_loss = float("nan")
        self.val_history: list[dict] = []
        self._row: Optional[tuple[int, dict]] = None  # the logged row of the step in progress

    # ---------------------------------------------------------------- hooks for tasks
    def step_loss(self, batch) -> StepLoss:
        raise NotImplementedError

    def step_metrics(self, batch, out: StepLoss) -> dict:
        return {}

    def val_step(self, batch) -> None:
        raise NotImplementedError

    def val_metrics(self) -> Optional[dict]:
        """Metrics of the validation just finished (``loss`` and ``bpb`` at least), or None if empty."""
        raise NotImplementedError

    def on_val_metrics(self, m: dict) -> None:
        """Called after each (non-sanity) validation with its metrics: best-checkpoint tracking etc."""

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ---------------------------------------------------------------- training
    def on_train_batch_start(self, batch, batch_idx):
        # batches_seen, not global_step: with trainer.accumulate_grad_batches > 1 each micro-batch of
        # one optimizer step gets its own dropout seed (the two are equal without accumulation)
        torch.manual_seed((self.run.seed * 1_000_003 + self.batches_seen) % 2**63)

    def training_step(self, batch, batch_idx):
        out = self.step_loss(batch)
        if not torch.isfinite(out.total):
            raise NonFiniteError(
                f"non-finite training loss ({out.total.item()}) at step {self.global_step}; "
                "stopped before the optimizer step (lower optim.lr, check the data)"
            )
        self.batches_seen += 1
        self.tokens_seen += out.tokens
        self.train_bytes += out.bytes
        self._tok_since += out.tokens
        self.last_train_loss = out.loss.item()
        if self.global_step % self.run.trainer.log_every == 0:
            self._log_step(batch, out)
        return out.total

    def _log_step(self, batch, out: StepLoss) -> None:
        now = time.perf_counter()
        metrics: dict[str, Any] = {
            "train/loss": out.loss.detach(),
            "train/epoch": float(batch["epoch"]),
            "train/tokens_seen": float(self.tokens_seen),
            "train/bytes_seen": float(self.train_bytes),  # the report's equal-training-bytes axis
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
        }
        if self._t_last is not None and now > self._t_last:
            self.tokens_per_sec = self._tok_since / (now - self._t_last)
            metrics["train/tokens_per_sec"] = self.tokens_per_sec
            mfu = self.mfu(self.tokens_per_sec)
            if mfu is not None:
                metrics["train/mfu"] = mfu
        self._t_last, self._tok_since = now, 0
        if out.aux is not None:
            metrics["train/aux_loss"] = out.aux.detach()
        metrics.update(self.step_metrics(batch, out))
        # callback_metrics (progress display, early stopping) only: rows are written by write_row
        self.log_dict(metrics, on_step=True, on_epoch=False, logger=False)
        self._row = (self.global_step, metrics)

    def write_row(self, step: int, metrics: dict) -> None:
        """One logged row labelled with the step its values were computed at: for ``train/*`` the
        ``global_step`` of the batch (the weights after that many optimizer steps), for ``val/*`` the
        number of optimizer steps taken. Written to every logger directly, not through Lightning's
        logger connector, whose row label runs ahead of the step the values belong to."""
        if self._trainer is None or self.trainer.sanity_checking:
            return
        row = {k: (v.item() if hasattr(v, "item") else v) for k, v in metrics.items()}
        for lg in self.loggers:
            lg.log_metrics(row, step=step)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self._row is not None:  # after the optimizer step: the row includes the gradient norm
            step, metrics = self._row
            self._row = None
            self.write_row(step, metrics)

    def on_before_optimizer_step(self, optimizer):
        # Clipping here (not through Trainer.gradient_clip_val) computes the norm once for both
        # the clip and the non-finite check, which must happen before the optimizer step.
        clip = self.run.optim.grad_clip or float("inf")
        wrapped = self.trainer.strategy.model if self._trainer is not None else None
        if hasattr(wrapped, "clip_grad_norm_"):  # FSDP: each rank holds a shard; the norm is over all
            norm = wrapped.clip_grad_norm_(clip)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        if not torch.isfinite(norm):
            raise NonFiniteError(
                f"non-finite gradient norm at step {self.global_step}; stopped before the optimizer step"
            )
        if self._row is not None:
            self._row[1]["train/grad_norm"] = norm.detach()
            self.log("train/grad_norm", norm, on_step=True, logger=False)

    def configure_optimizers(self):
        from lmlab.optim import build_optimizer  # optim.name / optim.schedule: lmlab/optim.py

        return build_optimizer(self.named_parameters(), self.run)

    # ---------------------------------------------------------------- model FLOPs utilisation
    _peak: Optional[float] = None
    _peak_known = False
    _peak_warned = False

    def mfu(self, tokens_per_sec: float) -> Optional[float]:
        """Model FLOPs utilisation of this device: ``lmlab.model.flops.flops_per_token`` (3 x the forward
        count at seq_len: forward + backward) x this rank's tokens/s / the device's peak
        (``lmlab.train.mfu.peak_flops``); None when the peak or the FLOP count is unknown."""
        from lmlab.model.flops import flops_per_token, mfu
        from lmlab.train.mfu import peak_flops

        if not self._peak_known:
            self._peak = peak_flops(self.device, self.run.trainer.precision, self.run.cache_dir)
            self._peak_known = True
        if not hasattr(self.model, "flops_per_token") or not math.isfinite(tokens_per_sec):
            return None
        value = mfu(flops_per_token(self.model), tokens_per_sec, self._peak)
        if value is not None and value > 1.0:
            # More than the peak is impossible: the peak is understated (a CPU peak measured on a busy
            # machine). A record must not show it, so MFU is unknown and the user is told where to fix it.
            if not self._peak_warned:
                self._peak_warned = True
                from lmlab.model.flops import PEAK_FILE, cache_root

                where = (str(cache_root(self.run.cache_dir) / PEAK_FILE) if self.device.type == "cpu"
                         else "lmlab.model.flops's GPU table")
                rank_zero_warn(f"MFU not reported: the achieved {value * self._peak / 1e9:.1f} GFLOP/s exceed the "
                               f"peak of {self._peak / 1e9:.1f} GFLOP/s in {where}; re-measure it on an idle "
                               f"machine: python scripts/bench/peak.py")
            return None
        return value

    # ---------------------------------------------------------------- distributed sums
    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every rank (itself on one process); the result is on ``t``'s device.

        Validation sums (nats, tokens, bytes) go through this before any division, so a figure
        from N processes equals the one-process figure over the same blocks."""
        if self._trainer is None or self.trainer.world_size == 1:
            return t
        return self.trainer.strategy.reduce(t.to(self.device), reduce_op="sum").to(t.device)

    # ---------------------------------------------------------------- validation
    def validation_step(self, batch, batch_idx):
        self.val_step(batch)

    def on_validation_epoch_end(self):
        m = self.val_metrics()
        if not m:
            return
        for k, v in m.items():
            self.log(f"val/{k}", v, prog_bar=k in self.prog_bar_metrics, logger=False)
        if self.trainer.sanity_checking:
            return
        self.write_row(self.global_step, {f"val/{k}": v for k, v in m.items()})
        self.val_history.append({"step": self.global_step, **{f"val_{k}": v for k, v in m.items()
                                                               if k in self.history_metrics}})
        self.on_val_metrics(m)

    prog_bar_metrics: tuple[str, ...] = ("bpb",)
    history_metrics: tuple[str, ...] = ("loss", "bpb")

    # ---------------------------------------------------------------- resumable state
    def world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def on_save_checkpoint(self, checkpoint):
        from lmlab.config import to_dict
        from lmlab.train.checkpoint import FORMAT

        checkpoint["lmlab"] = {
            "format": FORMAT,
            "task": self.run.task.name,
            "config": to_dict(self.run),
            "tokenizer": self.tokenizer.to_state() if self.tokenizer is not None else None,
            "tokenizer_sha256": self.tokenizer.content_hash() if self.tokenizer is not None else None,
            "batches_seen": self.batches_seen,
            "tokens_seen": self.tokens_seen,
            "train_bytes": self.train_bytes,
            "num_workers": self.run.data.num_workers,
            "world_size": self.world_size(),
            "seed": self.run.seed,
            "val_history": [dict(h) for h in self.val_history],
            "extra": self.extra_state(),
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint["lmlab"]  # read_checkpoint refused any file without it
        if state["task"] != self.run.task.name:
            raise ResumeError(f"cannot resume: the checkpoint was written by task={state['task']}, "
                              f"this run has task={self.run.task.name}")
        if state["num_workers"] != self.run.data.num_workers:
            raise ResumeError(
                f"cannot resume: the checkpoint was written with data.num_workers={state['num_workers']}, "
                f"this run has data.num_workers={self.run.data.num_workers} (batch order depends on it)"
            )
        if state["world_size"] != self.world_size():
            raise ResumeError(
                f"cannot resume: the checkpoint was written with world size {state['world_size']}, "
                f"this run has {self.world_size()} (each rank's share of the data depends on it)"
            )
        if state["seed"] != self.run.seed:
            raise ResumeError(f"cannot resume: checkpoint seed={state['seed']}, this run seed={self.run.seed}")
        mine = self.tokenizer.content_hash() if self.tokenizer is not None else None
        if state.get("tokenizer_sha256") != mine:  # same config, yet another model (a replaced cache)
            raise ResumeError(
                f"cannot resume: the checkpoint was trained with tokenizer sha256 {state.get('tokenizer_sha256')}, "
                f"this run's tokenizer (from the cache under cache_dir) has {mine}; restore that tokenizer, "
                "or resume=false to start over")
        self.batches_seen = state["batches_seen"]
        self.tokens_seen = state["tokens_seen"]
        self.train_bytes = state["train_bytes"]
        self.val_history = [dict(h) for h in state["val_history"]]
        self.load_extra_state(state["extra"])


class Task:
    """Builds the DataModule (``datamodule``) and the module (``module()``) of one run.

    - ``set_start_batch(n)``: on resume, the batches already consumed;
    - ``summary()``: task fields for ``summary.json``; ``on_fit_end(run_dir)``: files beside the run,
      returns more summary fields;
    - ``load_model(run, ckpt, tokenizer)`` (classmethod): the trained network from a checkpoint read by
      ``lmlab.train.checkpoint.read_checkpoint`` -- how ``load_checkpoint`` dispatches by task.
    """

    Config = TaskConfig

    def __init__(self, run, log=print):
        self.run, self.log = run, log
        self.datamodule = self.make_datamodule()
        self._module: Optional[TaskModule] = None

    def make_datamodule(self) -> L.LightningDataModule:
        raise NotImplementedError

    def make_module(self) -> TaskModule:
        raise NotImplementedError

    def module(self) -> TaskModule:
        if self._module is None:
            self._module = self.make_module()
        return self._module

    def set_start_batch(self, n: int) -> None:
        self.datamodule.start_batch = n

    def summary(self) -> dict:
        return {}

    def on_fit_end(self, run_dir) -> dict:
        return {}

    @classmethod
    def load_model(cls, run, ckpt: dict, tokenizer) -> torch.nn.Module:
        raise NotImplementedError


def model_weights(ckpt: dict) -> dict:
    """The ``model.*`` entries of a Lightning checkpoint's state_dict, prefix (and compile's) removed."""
    w = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return {k.replace("_orig_mod.", ""): v for k, v in w.items()}
