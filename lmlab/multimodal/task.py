"""The ``image_text`` task: how the digits lab plugs into ``lmlab.train.run.train`` (see lmlab/train/task.py).

- ``ImageTextTask(run)``: ``datamodule`` (splits, training stream, validation batches), ``module()``
  (``ImageTextModule``), ``set_start_batch``, ``summary()`` and ``on_fit_end(run_dir)``.
- Loss (SPEC §15.3): mean text CE over the text targets (caption bytes and special tokens) +
  ``data.img_weight`` · mean image NLL per pixel (+ the FBDM smoothness penalty, + any attention aux
  loss); text and image terms are logged apart (``train/text_loss``, ``train/img_bpp``).
- Validation every ``trainer.val_every`` steps on the validation split (fixed template, both
  directions): ``val/loss`` (the objective), ``val/bpb`` (caption bits/byte, both directions pooled),
  ``val/img_bpp`` and the per-direction figures. The weights with the best ``val/img_bpp`` are kept (in
  memory and in every checkpoint, so resume keeps them); ``data.patience`` > 0 stops early.
- ``<split>_caption_acc_shuffled`` scores the captions against another image's pixels (a random
  permutation): about 0.1 when the model reads the image (SPEC §15 "How to test").
- At the end, the best weights are measured on ``data.eval_split`` (default test): every metric of
  ``metrics.py``, written into summary.json as ``<split>_*`` fields, with ``samples.png`` (one row of
  caption-conditioned samples per digit) in the run directory. The final numbers therefore always come
  from the best validation checkpoint, never the last step (SPEC §15.3: it overfits).
- Resume: the training stream is a pure function of (seed, example index), the checkpoint stores the
  batches consumed and the torch/numpy/python RNG states, so a resumed run sees the same batches.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lmlab.config import to_dict
from lmlab.multimodal import digits, metrics
from lmlab.multimodal.model import ImageTextModel
from lmlab.train.module import adamw_with_schedule


class DigitsDataModule(L.LightningDataModule):
    def __init__(self, run, log=print):
        super().__init__()
        self.run, self.log = run, log
        self.start_batch = 0
        self.splits = None

    def setup(self, stage: str | None = None) -> None:
        if self.splits is not None:
            return
        from lmlab.registry import DATA

        self.splits = DATA.get(self.run.data.name)(self.run.data).load(self.run.cache_dir)
        d = self.run.data
        self.val = digits.eval_batches(*self.splits["val"], d.patch, d.batch_size, d.eval_template)
        n = {k: len(v[1]) for k, v in self.splits.items()}
        M = (digits.SIDE // d.patch) ** 2
        self.log(f"data: digits {n['train']} train / {n['val']} val / {n['test']} test images; "
                 f"{M} patches of {d.patch}x{d.patch}; image head {d.image_head}; pos {self.run.pos.name}")

    def train_dataloader(self):
        d = self.run.data
        stream = digits.TrainStream(*self.splits["train"], d.patch, d.batch_size, self.run.seed,
                                    d.train_templates, d.understand_frac, start_batch=self.start_batch)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=d.num_workers,
                                           generator=_private_generator(self.run.seed))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val, batch_size=None, generator=_private_generator(0))


def _private_generator(seed: int) -> torch.Generator:
    """Each DataLoader iterator draws a base seed from its generator -- from the *global* torch RNG when
    none is given. Validation starts a new iterator every time, so without this a run resumed from a
    checkpoint written before a validation would see different dropout draws than the original run."""
    return torch.Generator().manual_seed(seed)


class ImageTextModule(L.LightningModule):
    def __init__(self, run):
        super().__init__()
        self.run = run
        self.model = ImageTextModel(run)
        self.batches_seen = 0
        self.tokens_seen = 0
        self.tokens_per_sec = float("nan")
        self.last_train_loss = float("nan")
        self.val_history: list[dict] = []
        self.best_state: dict | None = None
        self.best_step = -1
        self.best_val = math.inf
        self._bad_evals = 0
        self._t_last = None
        self._tok_since = 0

    def training_step(self, batch, batch_idx):
        out = self.model.losses(batch)
        text_loss = out["text_nll"].sum() / out["text_mask"].sum()
        img_loss = out["img_nll"].mean()
        loss = text_loss + self.run.data.img_weight * img_loss
        total = loss + out["penalty"]
        aux = self.model.transformer.aux_loss()
        if aux is not None:
            total = total + aux
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"non-finite training loss ({total.item()}) at step {self.global_step}; stopped before the "
                "optimizer step (lower optim.lr)"
            )
        self.batches_seen += 1
        n = int((batch["role"] != digits.NONE).sum())
        self.tokens_seen += n
        self._tok_since += n
        now = time.perf_counter()
        if self._t_last is None:
            self._t_last, self._tok_since = now, 0
        elif self.global_step % self.run.trainer.log_every == 0 and now > self._t_last:
            self.tokens_per_sec = self._tok_since / (now - self._t_last)
            self._t_last, self._tok_since = now, 0
            self.log("train/tokens_per_sec", self.tokens_per_sec, on_step=True)
        self.last_train_loss = loss.item()
        self.log("train/loss", loss, on_step=True, prog_bar=True)
        self.log("train/text_loss", text_loss, on_step=True)
        self.log("train/img_bpp", img_loss / math.log(2), on_step=True)
        self.log("train/epoch", float(batch["epoch"]), on_step=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True)
        return total

    def configure_optimizers(self):
        return adamw_with_schedule(self.parameters(), self.run)

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self):
        self._sums: dict = {}

    def validation_step(self, batch, batch_idx):
        for d, v in metrics.batch_sums(self.model.losses(batch), batch).items():
            self._sums[d] = self._sums.get(d, 0) + v

    def on_validation_epoch_end(self):
        if not self._sums:
            return
        m = metrics.summarize(self._sums, self.run.data.img_weight)
        if self.run.data.val_caption_acc:
            m["caption_acc"] = metrics.caption_accuracy(
                self.model, *self.trainer.datamodule.splits["val"], self.run.data.patch, self.run.data.eval_template)
        for k, v in m.items():
            self.log(f"val/{k}", v, prog_bar=k in ("img_bpp", "bpb"))
        if self.trainer.sanity_checking:
            return
        self.val_history.append({"step": self.global_step, "val_loss": m["loss"], "val_bpb": m["bpb"],
                                 "val_img_bpp": m["img_bpp"]})
        if m["img_bpp"] < self.best_val:
            self.best_val, self.best_step, self._bad_evals = m["img_bpp"], self.global_step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self._bad_evals += 1
            if self.run.data.patience and self._bad_evals >= self.run.data.patience:
                self.trainer.should_stop = True

    # ---------------------------------------------------------------- resumable state
    def on_save_checkpoint(self, checkpoint):
        checkpoint["lmlab"] = {
            "config": to_dict(self.run),
            "task": "image_text",
            "batches_seen": self.batches_seen,
            "tokens_seen": self.tokens_seen,
            "seed": self.run.seed,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "val_history": self.val_history,
            "best": {"state": self.best_state, "step": self.best_step, "val": self.best_val,
                     "bad_evals": self._bad_evals},
        }

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint.get("lmlab")
        if state is None:
            return
        if state["seed"] != self.run.seed:
            raise ValueError(f"cannot resume: checkpoint seed={state['seed']}, this run seed={self.run.seed}")
        self.batches_seen, self.tokens_seen = state["batches_seen"], state["tokens_seen"]
        self.val_history = list(state.get("val_history", []))
        b = state.get("best", {})
        self.best_state, self.best_step = b.get("state"), b.get("step", -1)
        self.best_val, self._bad_evals = b.get("val", math.inf), b.get("bad_evals", 0)
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    def best_model(self) -> ImageTextModel:
        model = copy.deepcopy(self.model)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()


def final_metrics(model: ImageTextModel, run, splits: dict, run_dir: Path | None, log=print) -> dict:
    """Every metric on ``data.eval_split`` (see metrics.py); writes samples.png when run_dir is given."""
    d = run.data
    name = d.eval_split
    images, labels = splits[name]
    batches = digits.eval_batches(images, labels, d.patch, 128, d.eval_template)
    out = {f"{name}_{k}": v for k, v in metrics.evaluate(model, batches, d.img_weight).items()}
    out[f"{name}_caption_acc"] = metrics.caption_accuracy(model, images, labels, d.patch, d.eval_template)
    other = np.random.default_rng(run.seed).permutation(len(labels))  # SPEC §15: another image's pixels
    out[f"{name}_caption_acc_shuffled"] = metrics.caption_accuracy(
        model, images[other], labels, d.patch, d.eval_template)
    judge = metrics.fit_judge(*splits["train"])
    samples, s_lab = metrics.sample_per_class(model, d.samples_per_class, seed=run.seed, template=d.eval_template)
    out[f"{name}_gen_acc"] = metrics.judge_accuracy(judge, samples, s_lab)
    out[f"{name}_gen_diversity"] = metrics.diversity_ratio(samples, s_lab, images, labels)
    out["judge_acc"] = metrics.judge_accuracy(judge, images, labels)
    out.update(metrics.reference_bpp(*splits["train"], images, labels))
    if run_dir is not None:
        metrics.save_grid(samples, s_lab, Path(run_dir) / "samples.png")
    log(f"{name} (best val checkpoint): image bits/pixel {out[f'{name}_img_bpp_uncond']:.3f} unconditional, "
        f"{out[f'{name}_img_bpp_cond']:.3f} caption-conditioned (marginal {out['ref_marginal_bpp']:.3f}, uniform "
        f"{out['ref_uniform_bpp']:.3f}); caption accuracy {out[f'{name}_caption_acc']:.3f}; "
        f"generation accuracy {out[f'{name}_gen_acc']:.3f} (judge {out['judge_acc']:.3f})")
    return out


class ImageTextTask:
    def __init__(self, run, log=print):
        self.run, self.log = run, log
        self.datamodule = DigitsDataModule(run, log=log)
        self._module = None
        self._final: dict | None = None

    def module(self) -> ImageTextModule:
        if self._module is None:
            self._module = ImageTextModule(self.run)
        return self._module

    def set_start_batch(self, n: int) -> None:
        self.datamodule.start_batch = n

    def _run_dir(self) -> Path:
        return Path(self.run.run_dir or Path(self.run.out_dir) / self.run.run_name)

    def summary(self) -> dict:
        if self._final is None:
            m, d = self.module(), self.run.data
            self.datamodule.setup("fit")
            final = final_metrics(m.best_model(), self.run, self.datamodule.splits, self._run_dir(), self.log)
            self._final = {
                "task": "image_text", "pos": self.run.pos.name, "image_head": d.image_head, "patch": d.patch,
                "seed": self.run.seed, "best_step": m.best_step, "best_val_img_bpp": m.best_val,
                "n_params": m.model.n_params(), "cache_elems_per_token": m.model.cache_elems_per_token(),
                "eval_split": d.eval_split, **final,
            }
        return self._final

    def on_fit_end(self, run_dir) -> None:
        self.summary()  # writes samples.png once


def load_image_text(path: str):
    """-> (ImageTextModel of the best validation weights, in eval mode; RunConfig) from a checkpoint."""
    from lmlab.config import ConfigError, RunConfig, from_dict, load_variants

    load_variants()
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = ckpt.get("lmlab") or {}
    problems: list[str] = []
    run = from_dict(RunConfig, state.get("config", {}), "", problems)
    if problems or state.get("task") != "image_text":
        raise ConfigError(problems or [f"{path} is not an image_text checkpoint"])
    model = ImageTextModel(run)
    best = (state.get("best") or {}).get("state")
    model.load_state_dict(best if best is not None else {
        k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")})
    return model.eval(), run
