"""``task=image_text``: the digits image-text lab (``data=digits``; sequences and heads in lmlab/multimodal).

- Config (this group's keys): ``image_head`` (categorical | fbdm | mse, the regression control of
  ``lmlab.multimodal.heads``) and its ``fbdm_*`` settings,
  ``img_weight``, ``eval_split``, ``samples_per_class``, ``val_caption_acc``, ``patience``. The data
  group (``data=digits``) keeps only what the sequences are (patch, templates, splits).
- Loss (SPEC §15.3): mean text CE over the text targets (caption bytes and special tokens) +
  ``task.img_weight`` · mean image NLL per pixel (+ the FBDM smoothness penalty, + any attention aux
  loss); text and image terms are logged apart (``train/text_loss``, ``train/img_bpp``).
- Guards, clipping, per-step seeding and resume come from ``lmlab.tasks.base.TaskModule``.
- Validation every ``trainer.val_every`` steps on the validation split (fixed template, both
  directions): ``val/loss`` (the objective), ``val/bpb`` (caption bits/byte, both directions pooled),
  ``val/img_bpp`` and the per-direction figures. The weights with the best ``val/img_bpp`` are kept (in
  memory and in every checkpoint, so resume keeps them); ``task.patience`` > 0 stops early.
- ``<split>_caption_acc_shuffled`` scores the captions against another image's pixels (a random
  permutation): about 0.1 when the model reads the image (SPEC §15 "How to test").
- Held-out sub-grid probe (``data.subgrid_holdout``, SPEC §15.4): training on random crops of the
  training sizes, validation on one such crop per image, and at the end ``<split>_heldout_img_bpp``
  on exactly the held-out sizes (every crop position) beside ``<split>_seen_img_bpp`` on the training
  sizes; the full-image metrics below are measured as well (the full grid may itself be held out).
- At the end, the best weights are measured on ``task.eval_split`` (default test): every metric of
  ``lmlab.multimodal.metrics``, written into summary.json as ``<split>_*`` fields, with ``samples.png``
  in the run directory. The final numbers therefore always come from the best validation checkpoint,
  never the last step (SPEC §15.3: it overfits).
- Training data: ``digits.TrainStream`` is a pure function of (seed, example index) and shards batches
  over DataLoader workers and DDP ranks, so every example is seen exactly once per epoch whatever
  ``data.num_workers`` is.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch

from lmlab.multimodal import digits, metrics
from lmlab.multimodal.model import ImageTextModel
from lmlab.registry import TASK
from lmlab.tasks.base import StepLoss, Task, TaskConfig, TaskModule, model_weights


@dataclass
class ImageTextConfig(TaskConfig):
    name: str = "image_text"
    image_head: Literal["categorical", "fbdm", "mse"] = "categorical"
    fbdm_n: int = 16  # non-DC frequencies N (SPEC §14: 8-16 real-line, ≥ 34 unit)
    fbdm_mode: Literal["real", "unit"] = "real"
    fbdm_gamma: float = 1e-4  # smoothness penalty weight on normalized coefficients
    img_weight: float = 1.0  # λ_img: loss = text CE + λ_img · image NLL per pixel
    eval_split: Literal["test", "val"] = "test"  # where the final summary metrics are measured
    samples_per_class: int = 20  # caption-conditioned samples per digit (judge accuracy, PNG grid)
    val_caption_acc: bool = False  # also score the 10 captions at every validation (slower)
    patience: int = 0  # stop after this many validations without a better val image bpp (0: never)

    def check(self, run) -> list[str]:
        p = super().check(run)
        if self.fbdm_n < 1:
            p.append(f"task.fbdm_n={self.fbdm_n} must be >= 1")
        if self.patience < 0:
            p.append(f"task.patience={self.patience} must be >= 0 (0 disables early stopping)")
        if self.img_weight < 0:
            p.append(f"task.img_weight={self.img_weight} must be >= 0")
        if self.samples_per_class < 1:
            p.append(f"task.samples_per_class={self.samples_per_class} must be >= 1")
        return p


def _private_generator(seed: int) -> torch.Generator:
    """Each DataLoader iterator draws a base seed from its generator -- from the *global* torch RNG when
    none is given. Keeping loaders off the global RNG keeps a resumed run's global draws identical."""
    return torch.Generator().manual_seed(seed)


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
        sub = d.subgrids()
        if sub is None:
            self.val = digits.eval_batches(*self.splits["val"], d.patch, d.batch_size, d.eval_template)
        else:  # validate (early stopping) on the training sizes only: the held-out ones stay unseen
            self.val = digits.subgrid_eval_batches(*self.splits["val"], d.patch, d.batch_size, sub[0],
                                                   d.eval_template, every_offset=False)
        n = {k: len(v[1]) for k, v in self.splits.items()}
        M = (digits.SIDE // d.patch) ** 2
        self.log(f"data: digits {n['train']} train / {n['val']} val / {n['test']} test images; "
                 f"{M} patches of {d.patch}x{d.patch}; image head {self.run.task.image_head}; "
                 f"pos {self.run.pos.name}"
                 + ("" if sub is None else f"; sub-grid probe: train on {_sizes(sub[0])}, hold out {_sizes(sub[1])}"))

    def train_stream(self) -> digits.TrainStream:
        d = self.run.data
        sub = d.subgrids()
        return digits.TrainStream(*self.splits["train"], d.patch, d.batch_size, self.run.seed,
                                  d.train_templates, d.understand_frac, start_batch=self.start_batch,
                                  subgrids=None if sub is None else sub[0])

    def train_dataloader(self):
        from lmlab.data.pipeline import worker_context

        nw = self.run.data.num_workers
        return torch.utils.data.DataLoader(self.train_stream(), batch_size=None, num_workers=nw,
                                           generator=_private_generator(self.run.seed),
                                           multiprocessing_context=worker_context(nw))

    def val_dataloader(self):
        return torch.utils.data.DataLoader(self.val, batch_size=None, generator=_private_generator(0))


class ImageTextModule(TaskModule):
    prog_bar_metrics = ("img_bpp", "bpb")
    history_metrics = ("loss", "bpb", "img_bpp")

    def __init__(self, run):
        super().__init__(run)
        self.model = ImageTextModel(run)
        self.best_state: dict | None = None
        self.best_step = -1
        self.best_val = math.inf
        self._bad_evals = 0

    def step_loss(self, batch) -> StepLoss:
        out = self.model.losses(batch)
        text_loss = out["text_nll"].sum() / out["text_mask"].sum()
        n_pix = out["patch_mask"].sum() * out["img_nll"].shape[-1]
        img_loss = out["img_nll"].sum() / n_pix  # bits/pixel figure (the exact NLL for every head)
        loss = text_loss + self.run.task.img_weight * img_loss
        total = loss + out["penalty"]
        if out["img_loss"] is not None:  # the mse control optimizes its regression objective, not the NLL
            total = total + self.run.task.img_weight * (out["img_loss"].sum() / n_pix - img_loss)
        aux = self.model.transformer.aux_loss()
        if aux is not None:
            total = total + aux
        self._parts = (text_loss.detach(), img_loss.detach())
        return StepLoss(loss, total, int((batch["role"] != digits.NONE).sum()), 0, aux)

    def step_metrics(self, batch, out) -> dict:
        text_loss, img_loss = self._parts
        return {"train/text_loss": text_loss, "train/img_bpp": img_loss / math.log(2)}

    def on_validation_epoch_start(self):
        self._sums: dict = {}

    def val_step(self, batch) -> None:
        for d, v in metrics.batch_sums(self.model.losses(batch), batch).items():
            self._sums[d] = self._sums.get(d, 0) + v

    def val_metrics(self):
        if not self._sums:
            return None
        m = metrics.summarize(self._sums, self.run.task.img_weight)
        if self.run.task.val_caption_acc:
            m["caption_acc"] = metrics.caption_accuracy(
                self.model, *self.trainer.datamodule.splits["val"], self.run.data.patch, self.run.data.eval_template)
        return m

    def on_val_metrics(self, m: dict) -> None:
        if m["img_bpp"] < self.best_val:
            self.best_val, self.best_step, self._bad_evals = m["img_bpp"], self.global_step, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self._bad_evals += 1
            if self.run.task.patience and self._bad_evals >= self.run.task.patience:
                self.trainer.should_stop = True

    def extra_state(self) -> dict:
        return {"best_state": self.best_state, "best_step": self.best_step, "best_val": float(self.best_val),
                "bad_evals": self._bad_evals}

    def load_extra_state(self, state: dict) -> None:
        self.best_state, self.best_step = state["best_state"], state["best_step"]
        self.best_val, self._bad_evals = state["best_val"], state["bad_evals"]

    def best_model(self) -> ImageTextModel:
        model = copy.deepcopy(self.model)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        return model.eval()


def _sizes(grids) -> str:
    return ", ".join(f"{h}x{w}" for h, w in grids)


def subgrid_metrics(model: ImageTextModel, run, images, labels, prefix: str) -> dict:
    """The held-out sub-grid probe on one split (SPEC §15.4): image bits/pixel on exactly the held-out
    sizes (every image, every crop position, both directions; ``<prefix>heldout_*``, pooled and per
    size) and on the training sizes (one crop per image, as in validation; ``<prefix>seen_*``)."""
    d, t = run.data, run.task
    train, held = d.subgrids()
    out = {}
    seen = metrics.evaluate(model, digits.subgrid_eval_batches(
        images, labels, d.patch, 128, train, d.eval_template, every_offset=False, seed=1), t.img_weight)
    out |= {f"{prefix}seen_{k}": seen[k] for k in ("img_bpp", "img_bpp_uncond", "img_bpp_cond")}
    total: dict = {}
    for g in held:  # one pass per size; the pooled figure adds the sizes' sums
        sums = metrics.evaluate_sums(model, digits.subgrid_eval_batches(images, labels, d.patch, 128, [g],
                                                                         d.eval_template))
        if len(held) > 1:
            out[f"{prefix}heldout_{g[0]}x{g[1]}_img_bpp"] = metrics.summarize(sums, t.img_weight)["img_bpp"]
        total = {k: total.get(k, 0) + v for k, v in sums.items()}
    pooled = metrics.summarize(total, t.img_weight)
    out |= {f"{prefix}heldout_{k}": pooled[k] for k in ("img_bpp", "img_bpp_uncond", "img_bpp_cond")}
    return out


def final_metrics(model: ImageTextModel, run, splits: dict, run_dir: Path | None, log=print) -> dict:
    """Every metric on ``task.eval_split`` (see metrics.py); writes samples.png when run_dir is given."""
    d, t = run.data, run.task
    name = t.eval_split
    images, labels = splits[name]
    batches = digits.eval_batches(images, labels, d.patch, 128, d.eval_template)
    out = {f"{name}_{k}": v for k, v in metrics.evaluate(model, batches, t.img_weight).items()}
    out[f"{name}_caption_acc"] = metrics.caption_accuracy(model, images, labels, d.patch, d.eval_template)
    other = np.random.default_rng(run.seed).permutation(len(labels))  # SPEC §15: another image's pixels
    out[f"{name}_caption_acc_shuffled"] = metrics.caption_accuracy(
        model, images[other], labels, d.patch, d.eval_template)
    judge = metrics.fit_judge(*splits["train"])
    samples, s_lab = metrics.sample_per_class(model, t.samples_per_class, seed=run.seed, template=d.eval_template)
    out[f"{name}_gen_acc"] = metrics.judge_accuracy(judge, samples, s_lab)
    out[f"{name}_gen_diversity"] = metrics.diversity_ratio(samples, s_lab, images, labels)
    out["judge_acc"] = metrics.judge_accuracy(judge, images, labels)
    out.update(metrics.reference_bpp(*splits["train"], images, labels))
    if d.subgrids() is not None:
        out.update(subgrid_metrics(model, run, images, labels, f"{name}_"))
        log(f"{name} sub-grid probe: image bits/pixel {out[f'{name}_heldout_img_bpp']:.3f} on the held-out sizes "
            f"({_sizes(d.subgrids()[1])}), {out[f'{name}_seen_img_bpp']:.3f} on the training sizes")
    if run_dir is not None:
        metrics.save_grid(samples, s_lab, Path(run_dir) / "samples.png")
    log(f"{name} (best val checkpoint): image bits/pixel {out[f'{name}_img_bpp_uncond']:.3f} unconditional, "
        f"{out[f'{name}_img_bpp_cond']:.3f} caption-conditioned (marginal {out['ref_marginal_bpp']:.3f}, uniform "
        f"{out['ref_uniform_bpp']:.3f}); caption accuracy {out[f'{name}_caption_acc']:.3f}; "
        f"generation accuracy {out[f'{name}_gen_acc']:.3f} (judge {out['judge_acc']:.3f})")
    return out


@TASK.register("image_text")
class ImageTextTask(Task):
    Config = ImageTextConfig

    def __init__(self, run, log=print):
        super().__init__(run, log)
        self._final: dict | None = None

    def make_datamodule(self):
        return DigitsDataModule(self.run, log=self.log)

    def make_module(self) -> ImageTextModule:
        return ImageTextModule(self.run)

    def _run_dir(self) -> Path:
        return Path(self.run.run_dir or Path(self.run.out_dir) / self.run.run_name)

    def summary(self) -> dict:
        if self._final is None:
            m, d, t = self.module(), self.run.data, self.run.task
            self.datamodule.setup("fit")
            final = final_metrics(m.best_model(), self.run, self.datamodule.splits, self._run_dir(), self.log)
            self._final = {
                "task": "image_text", "pos": self.run.pos.name, "image_head": t.image_head, "patch": d.patch,
                "seed": self.run.seed, "best_step": m.best_step, "best_val_img_bpp": m.best_val,
                "n_params": m.model.n_params(), "cache_elems_per_token": m.model.cache_elems_per_token(),
                "eval_split": t.eval_split,
                "subgrid_holdout": None if d.subgrid_holdout is None else list(d.subgrid_holdout), **final,
            }
        return self._final

    def on_fit_end(self, run_dir) -> dict:
        self.summary()  # writes samples.png once
        return {}

    @classmethod
    def load_model(cls, run, ckpt: dict, tokenizer):
        """The best validation weights (what every reported figure is measured on), else the last."""
        model = ImageTextModel(run)
        best = ckpt["lmlab"]["extra"].get("best_state")
        model.load_state_dict(best if best is not None else model_weights(ckpt))
        return model.eval()
