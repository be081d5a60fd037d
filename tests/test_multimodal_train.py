"""End to end through lmlab.train.run: a tiny image-text model must beat the per-position marginal."""

import json

import pytest


@pytest.mark.slow
def test_short_training_beats_the_marginal_baseline(compose, tmp_path):
    from lmlab.train.run import train

    run = compose([
        "data=digits", "model.d_model=64", "model.n_layer=2", "model.n_head=4", "model.seq_len=48",
        "model.mlp=gelu", "pos=rope2d", "optim.warmup_steps=20", "trainer.max_steps=150",
        "trainer.val_every=50", "trainer.log_every=25", "trainer.progress_bar=false", "trainer.num_threads=1",
        "data.eval_split=val", "data.samples_per_class=2", "run_name=digits-tiny", f"out_dir={tmp_path}",
    ])
    run.run_dir = str(tmp_path / "digits-tiny")
    s = train(run, log=lambda *a: None)
    saved = json.loads((tmp_path / "digits-tiny" / "summary.json").read_text())
    assert saved["best_step"] == s["best_step"] > 0
    assert (tmp_path / "digits-tiny" / "samples.png").stat().st_size > 0
    # the best validation checkpoint, measured on the validation split, beats both reference points
    assert s["val_img_bpp_uncond"] < s["ref_marginal_bpp"] < s["ref_uniform_bpp"]
    assert s["val_img_bpp_cond"] < s["ref_marginal_bpp"]
    assert s["val_img_bpp"] == pytest.approx(s["best_val_img_bpp"], rel=1e-6)  # same weights, same split
