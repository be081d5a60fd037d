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
