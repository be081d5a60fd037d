"""End to end through lmlab.train.run: a tiny image-text model beats the per-position marginal, and a run
resumed from a mid-run checkpoint ends bit-identical to the uninterrupted one (same batches, same dropout)."""

import json

import pytest


@pytest.mark.slow
def test_short_training_beats_the_marginal_baseline_and_resumes_exactly(compose, tmp_path):
    from lmlab.train.run import train

    base = [
        "data=digits", "task=image_text", "model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.seq_len=48",
        "model.mlp=gelu", "model.dropout=0.1", "pos=rope2d", "optim.warmup_steps=20", "trainer.max_steps=150",
        "trainer.val_every=50", "trainer.log_every=25", "trainer.progress_bar=false", "trainer.num_threads=1",
        "trainer.keep_last=3", "task.eval_split=val", "task.samples_per_class=1", f"out_dir={tmp_path}",
    ]
    run = compose([*base, "run_name=a"])
    run.run_dir = str(tmp_path / "a")
    s = train(run, log=lambda *a: None)
    saved = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert saved["best_step"] == s["best_step"] > 0
    assert (tmp_path / "a" / "samples.png").stat().st_size > 0
    # the best validation checkpoint, measured on the validation split, beats both reference points
    assert s["val_img_bpp_uncond"] < s["ref_marginal_bpp"] < s["ref_uniform_bpp"]
    assert s["val_img_bpp_cond"] < s["ref_marginal_bpp"]
    assert s["val_img_bpp"] == pytest.approx(s["best_val_img_bpp"], rel=1e-6)  # same weights, same split

    resumed = compose([*base, "run_name=b", f"resume={tmp_path / 'a' / 'checkpoints' / 'step-100.ckpt'}"])
    resumed.run_dir = str(tmp_path / "b")
    r = train(resumed, log=lambda *a: None)
    for k in ("train_loss", "val_loss", "best_step", "val_img_bpp", "val_caption_acc"):
        assert r[k] == s[k], k


@pytest.mark.slow
def test_subgrid_probe_run_reports_exactly_the_held_out_sizes_and_mse_head_trains(compose, tmp_path):
    """A probe run (data.subgrid_holdout) with the mse control head: training sees only training sizes,
    the summary's held-out figure is the best model's bits/pixel on every crop of exactly the held-out
    sizes, and the mse head's bits/pixel are an exact likelihood below the uniform 4.087."""
    import torch

    from lmlab.multimodal import digits, metrics
    from lmlab.tasks.image_text import ImageTextTask
    from lmlab.train.run import train

    run = compose([
        "data=digits", "task=image_text", "model.d_model=32", "model.n_layer=1", "model.n_head=1",
        "model.seq_len=48", "model.mlp=gelu", "pos=rope_tie_v2", "optim.warmup_steps=5", "trainer.max_steps=30",
        "trainer.val_every=15", "trainer.log_every=15", "trainer.progress_bar=false", "trainer.num_threads=1",
        "task.eval_split=val", "task.samples_per_class=1", "task.image_head=mse",
        "data.subgrid_holdout=[3x3,2x4]", f"out_dir={tmp_path}", "run_name=p",
    ])
    run.run_dir = str(tmp_path / "p")
    s = train(run, log=lambda *a: None)
    assert s["subgrid_holdout"] == ["3x3", "2x4"] and s["image_head"] == "mse"
    for k in ("val_heldout_img_bpp", "val_seen_img_bpp", "val_heldout_3x3_img_bpp", "val_heldout_2x4_img_bpp"):
        assert 0 < s[k] < s["ref_uniform_bpp"], k
    # the best-val weights on the validation split's crops of exactly 3x3 and 2x4, every offset
    ckpt = torch.load(tmp_path / "p" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    model = ImageTextTask.load_model(run, ckpt, None)
    images, labels = digits.load_split()["val"]
    ref = metrics.evaluate(model, digits.subgrid_eval_batches(images, labels, 2, 64, [(3, 3), (2, 4)]))
    assert s["val_heldout_img_bpp"] == pytest.approx(ref["img_bpp"], rel=1e-6)
    only33 = metrics.evaluate(model, digits.subgrid_eval_batches(images, labels, 2, 64, [(3, 3)]))
    assert s["val_heldout_3x3_img_bpp"] == pytest.approx(only33["img_bpp"], rel=1e-6)
    assert s["val_heldout_img_bpp"] != pytest.approx(s["val_seen_img_bpp"], rel=1e-9)
