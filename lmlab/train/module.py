"""The Lightning module for language modelling: loss, metrics, optimizer, and resumable state.

Guarantees:
- Non-finite loss or gradient norm raises ``FloatingPointError`` naming the step *before* the
  optimizer step, so parameters stay as they were after the previous step and no checkpoint of
  the poisoned state is written.
- Randomness in a training step (dropout) comes from a seed derived from (run seed, step), not
  from whatever the global RNG went through before -- data-loader start-ups and validations
  consume global draws differently in a resumed run. With the data position (batches consumed,
  workers) in the checkpoint, a resumed run repeats the uninterrupted one bit for bit.
- Validation reports ``val/bpb``: total nats over the target tokens divided by the UTF-8 bytes
  those tokens stand for, over ln 2 -- comparable across tokenizers.
"""

from __future__ import annotations

import math
import pickle
import time

import lightning as L
import torch
import torch.nn.functional as F

from lmlab.config import to_dict
from lmlab.eval.metrics import bits_per_byte, nats_and_bytes
from lmlab.model.transformer import build_model


def lr_lambda(optim_cfg, max_steps: int):
    def f(step: int) -> float:
        if step < optim_cfg.warmup_steps:
            return (step + 1) / optim_cfg.warmup_steps
        span = max(1, max_steps - optim_cfg.warmup_steps)
        progress = min(1.0, (step - optim_cfg.warmup_steps) / span)
        cos = 0.5 * (1 + math.cos(math.pi * progress))
        return optim_cfg.min_lr_ratio + (1 - optim_cfg.min_lr_ratio) * cos

    return f


def adamw_with_schedule(parameters, run) -> dict:
    """AdamW (no weight decay on gains and biases) with warmup + cosine, stepped per step."""
    o = run.optim
    params = [p for p in parameters if p.requires_grad]
    opt = torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(o, run.trainer.max_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class LMModule(L.LightningModule):
    def __init__(self, run, tokenizer, bytes_len: torch.Tensor):
        super().__init__()
        self.run = run
        self.tokenizer = tokenizer
        self.model = build_model(run, tokenizer.vocab_size)
        self.register_buffer("bytes_len", bytes_len.clone(), persistent=False)
        self.batches_seen = 0
        self.tokens_seen = 0
        self.train_bytes = 0
        self._t_last = None
        self._tok_since = 0
        self.tokens_per_sec = float("nan")
        self.last_train_loss = float("nan")
        self.val_history: list[dict] = []

    def forward(self, idx):
        return self.model(idx)

    # ---------------------------------------------------------------- training
    def on_train_batch_start(self, batch, batch_idx):
        torch.manual_seed((self.run.seed * 1_000_003 + self.global_step) % 2**63)

    def training_step(self, batch, batch_idx):
        tokens = batch["tokens"]  # (B, T+1)
        x, y = tokens[:, :-1], tokens[:, 1:]
        logits = self.model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        aux = self.model.aux_loss()
        total = loss if aux is None else loss + aux
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite training loss ({total.item()}) at step {self.global_step}; "
                "stopped before the optimizer step (lower optim.lr, check the data)"
            )
        self.batches_seen += 1
        n = y.numel()
        self.tokens_seen += n
        self.train_bytes += int(self.bytes_len[y].sum())
        self._tok_since += n
        self.last_train_loss = loss.item()
        if self.global_step % self.run.trainer.log_every == 0:  # only the steps Lightning writes
            self._log_step(batch, loss, aux)
        return total

    def _log_step(self, batch, loss, aux) -> None:
        now = time.perf_counter()
        metrics = {
            "train/loss": loss.detach(),
            "train/epoch": float(batch["epoch"]),
            "train/tokens_seen": float(self.tokens_seen),
            "lr": self.trainer.optimizers[0].param_groups[0]["lr"],
        }
        if self._t_last is not None and now > self._t_last:
            self.tokens_per_sec = self._tok_since / (now - self._t_last)
            metrics["train/tokens_per_sec"] = self.tokens_per_sec
        self._t_last, self._tok_since = now, 0
        if aux is not None:
            metrics["train/aux_loss"] = aux.detach()
        for i, b in enumerate(self.model.blocks):
            for k, v in b.attn.metrics().items():
                metrics[f"train/{k}/layer{i}"] = v
        self.log_dict(metrics, on_step=True, on_epoch=False)
        self.log("train/loss_bar", loss.detach(), prog_bar=True, logger=False)

    def on_before_optimizer_step(self, optimizer):
        # Clipping here (not through Trainer.gradient_clip_val) computes the norm once for both
        # the clip and the non-finite check, which must happen before the optimizer step.
        clip = self.run.optim.grad_clip or float("inf")
        norm = torch.nn.utils.clip_grad_norm_(self.parameters(), clip)
        if not torch.isfinite(norm):
            raise FloatingPointError(
                f"non-finite gradient norm at step {self.global_step}; stopped before the optimizer step"
            )
        if self.global_step % self.run.trainer.log_every == 0:
            self.log("train/grad_norm", norm, on_step=True)

    def configure_optimizers(self):
        return adamw_with_schedule(self.parameters(), self.run)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self):
        self._val = torch.zeros(3, dtype=torch.float64)  # nats, tokens, bytes

    def validation_step(self, batch, batch_idx):
        tokens = batch[0]
        x, y = tokens[:, :-1], tokens[:, 1:]
        nats, n_tok, n_bytes = nats_and_bytes(self.model(x), y, self.bytes_len)
        self._val += torch.tensor([nats, n_tok, n_bytes], dtype=torch.float64)

    def on_validation_epoch_end(self):
        nats, n_tok, n_bytes = self._val.tolist()
        if n_tok == 0:
            return
        loss = nats / n_tok
        bpb = bits_per_byte(nats, n_bytes)
        self.log("val/loss", loss)
        self.log("val/bpb", bpb, prog_bar=True)
        self.log("val/ppl", math.exp(min(loss, 50.0)))
        if not self.trainer.sanity_checking:
            self.val_history.append({"step": self.global_step, "val_loss": loss, "val_bpb": bpb})

    # ---------------------------------------------------------------- resumable state
    def on_save_checkpoint(self, checkpoint):
        checkpoint["lmlab"] = {
            "config": to_dict(self.run),
            "tokenizer": pickle.dumps(self.tokenizer),
            "batches_seen": self.batches_seen,
            "tokens_seen": self.tokens_seen,
            "train_bytes": self.train_bytes,
            "num_workers": self.run.data.num_workers,
            "world_size": self.trainer.world_size,
            "seed": self.run.seed,
            "val_history": self.val_history,
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("lmlab")
        if state is None:
            return
        if state["num_workers"] != self.run.data.num_workers:
            raise ValueError(
                f"cannot resume: the checkpoint was written with data.num_workers={state['num_workers']}, "
                f"this run has data.num_workers={self.run.data.num_workers} (batch order depends on it)"
            )
        world = self.trainer.world_size if self._trainer is not None else 1
        if state.get("world_size", 1) != world:
            raise ValueError(
                f"cannot resume: the checkpoint was written with world size {state.get('world_size', 1)}, "
                f"this run has {world} (each rank's share of the data depends on it)"
            )
        if state["seed"] != self.run.seed:
            raise ValueError(f"cannot resume: checkpoint seed={state['seed']}, this run seed={self.run.seed}")
        self.batches_seen = state["batches_seen"]
        self.tokens_seen = state["tokens_seen"]
        self.train_bytes = state["train_bytes"]
        self.val_history = list(state.get("val_history", []))
