"""One module base for every task: gradient clipping and the non-finite stop hold for task=lm and
task=image_text alike; the digits stream yields every example once per epoch with any worker count;
a killed run of either task resumes bit for bit."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lmlab.errors import NonFiniteError
from lmlab.train.run import train

DIGITS = [
    "data=digits", "task=image_text", "model.d_model=32", "model.n_layer=1", "model.n_head=4",
    "model.seq_len=48", "model.mlp=gelu", "data.batch_size=8", "data.max_docs=64", "data.n_val=16",
    "data.n_test=16", "trainer.max_steps=6", "trainer.val_every=3", "trainer.log_every=1",
    "trainer.progress_bar=false", "trainer.num_threads=1", "task.eval_split=val", "task.samples_per_class=1",
]


@pytest.fixture(params=["lm", "image_text"])
def task_overrides(request, tiny_overrides, tmp_path):
    if request.param == "lm":
        return tiny_overrides
    return [*DIGITS, f"out_dir={tmp_path}"]


def _grad_norm(module) -> float:
    grads = [p.grad.detach().flatten() for p in module.parameters() if p.grad is not None]
    return float(torch.cat(grads).norm())


class GradNorms(L.Callback):
    """Gradient norm as the optimizer used it (grads are zeroed only when the next step starts)."""

    def __init__(self):
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.norms.append(_grad_norm(pl_module))


def test_gradients_are_clipped_for_every_task(compose, task_overrides):
    clip = 1e-3  # far below any raw gradient norm of a fresh model
    rec = GradNorms()
    train(compose(task_overrides + ["run_name=clip", f"optim.grad_clip={clip}", "trainer.max_steps=3",
                                    "trainer.val_every=100"]), log=lambda *_: None, callbacks=[rec])
    assert len(rec.norms) == 3
    for n in rec.norms:
        assert n == pytest.approx(clip, rel=1e-3)


class Poison(L.Callback):
    """At ``step``, make the loss (``where='loss'``) or only the gradient (``where='grad'``) non-finite;
    record the weights after every completed step."""

    def __init__(self, step: int, where: str):
        self.step, self.where = step, where
        self.after: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step != self.step:
            return
        model = pl_module.model
        if self.where == "grad":
            p = next(q for q in model.parameters() if q.requires_grad)
            p.register_hook(lambda g: g * float("inf"))
        elif hasattr(model, "losses"):  # image_text
            losses = model.losses
            model.losses = lambda b: {**losses(b), "img_nll": losses(b)["img_nll"] * float("nan")}
        else:
            forward = model.forward
            model.forward = lambda *a, **k: forward(*a, **k) * float("nan")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


@pytest.mark.parametrize("where,match", [("loss", "non-finite training loss .* at step 3"),
                                         ("grad", "non-finite gradient norm at step 3")])
def test_non_finite_stops_before_the_update_for_every_task(compose, task_overrides, where, match):
    run = compose(task_overrides + [f"run_name=poison-{where}"])
    cb = Poison(3, where)
    module = {}

    class Keep(L.Callback):
        def on_train_start(self, trainer, pl_module):
            module["m"] = pl_module

    with pytest.raises(NonFiniteError, match=match):
        train(run, log=lambda *_: None, callbacks=[cb, Keep()])
    now = module["m"].model.state_dict()
    assert all(torch.equal(now[k], cb.after[k]) for k in now)  # the weights of step 3's start
    ckpts = sorted(p.name for p in (Path(run.out_dir) / f"poison-{where}/checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step-3.ckpt"]  # nothing written after the poisoned step


def _stream_indices(compose, tmp_path, workers: int, n_batches: int, start: int = 0) -> list[list[int]]:
    from lmlab.tasks.image_text import DigitsDataModule

    run = compose([*DIGITS, f"out_dir={tmp_path}", f"data.num_workers={workers}"])
    dm = DigitsDataModule(run, log=lambda *_: None)
    dm.setup("fit")
    dm.start_batch = start
    out = []
    for i, batch in enumerate(dm.train_dataloader()):
        if i == n_batches:
            break
        out.append(batch["index"].tolist())
    return out


def test_digits_stream_with_two_workers_sees_each_example_once_per_epoch(compose, tmp_path):
    n = 64  # data.max_docs=64 training images in batches of 8: one epoch is 8 batches
    two = _stream_indices(compose, tmp_path, 2, 16)
    for epoch in (two[:8], two[8:]):
        flat = [i for b in epoch for i in b]
        assert sorted(flat) == list(range(n)), "an example seen twice or never in one epoch"
    assert two[:8] != two[8:]  # epochs are reshuffled
    assert two == _stream_indices(compose, tmp_path, 0, 16)  # the worker count does not change the stream
    assert _stream_indices(compose, tmp_path, 2, 5, start=3) == two[3:8]  # resume mid-epoch


from conftest import Crash, CrashAt  # noqa: E402  (one definition, tests/conftest.py)


@pytest.mark.slow
def test_image_text_kill_and_resume_is_bit_for_bit(compose, tmp_path):
    base = [*DIGITS, f"out_dir={tmp_path}", "model.dropout=0.1", "trainer.max_steps=8", "trainer.val_every=4",
            "trainer.deterministic=true"]
    ref = train(compose([*base, "run_name=ref"]), log=lambda *_: None)
    with pytest.raises(Crash):
        train(compose([*base, "run_name=killed"]), log=lambda *_: None, callbacks=[CrashAt(6)])
    resumed = train(compose([*base, "run_name=killed"]), log=lambda *_: None)
    from lmlab.train.checkpoint import read_checkpoint

    a = read_checkpoint(tmp_path / "ref/checkpoints/last.ckpt")
    b = read_checkpoint(tmp_path / "killed/checkpoints/last.ckpt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    for k in ("train_loss", "val_loss", "best_step", "val_img_bpp"):
        assert resumed[k] == ref[k], k
