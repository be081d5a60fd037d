"""The sweep report builds from a fabricated sweep directory and contains every run."""

import json

import numpy as np
import yaml

from lmlab.cli.report import build_report, find_axes, load_runs


def _probe(rng, gap: float) -> dict:
    def kind(base):
        return {m: float(np.clip(base + rng.normal(0, 0.01), 0, 1)) for m in
                ("p_char", "p_word", "greedy_char", "greedy_word")} | {"dropped_max": 1e-4}

    out = {}
    for name in ("plain", "heal_k1"):
        b, m = kind(0.6), kind(0.6 - (gap if name == "plain" else 0.0))
        ref = kind(0.7) | {"greedy_char": float("nan"), "greedy_word": float("nan")}
        out[name] = {"boundary": b, "mid_token": m, "mid_token_ref": ref, "gap": {k: b[k] - m[k] for k in m},
                     "gap_matched": {k: ref[k] - m[k] for k in ("p_char", "p_word")}}
    return out | {"n_pairs": 10, "settings": {"n_prompts": 10}}


def make_sweep(root, modes=("viterbi", "sample"), seeds=(1, 2)):
    rng = np.random.default_rng(0)
    bpb = {}
    for mode in modes:
        for seed in seeds:
            d = root / f"tokenizer.mode={mode},seed={seed}"
            (d / "checkpoints").mkdir(parents=True)
            cfg = {"model": {"d_model": 32}, "tokenizer": {"name": "unigram", "mode": mode, "alpha": 0.1},
                   "seed": seed, "run_name": d.name, "run_dir": str(d), "sweep_name": root.name}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
            v = 2.0 + 0.1 * (mode == "sample") + 0.01 * seed
            bpb[(mode, seed)] = v
            rows = ["step,train/loss,val/loss,val/bpb,lr"]
            for step in (100, 200):
                rows += [f"{step - 1},3.0,,,0.001", f"{step - 1},,2.5,{v + (200 - step) / 1000},"]
            (d / "metrics.csv").write_text("\n".join(rows) + "\n")
            summary = {"val_bpb": v, "val_loss": 2.5, "train_loss": 3.0, "step": 200, "tokens_per_sec": 1000.0,
                       "wall_time_s": 60.0, "train_bytes_per_token": 3.0 if mode == "sample" else 3.5,
                       "val_bytes_per_token": 3.5}
            (d / "summary.json").write_text(json.dumps(summary))
            (d / "probe.json").write_text(json.dumps(_probe(rng, 0.3 if mode == "viterbi" else 0.05)))
    failed = root / "tokenizer.mode=sample_v1,seed=1"
    (failed / ".hydra").mkdir(parents=True)  # a job that failed validation: Hydra's config only
    (failed / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"tokenizer": {"name": "unigram", "mode": "sample_v1",
                                                                      "alpha": 0.1}, "seed": 1,
                                                        "run_name": failed.name}))
    (failed / "error.txt").write_text("boom\n")
    return bpb


def test_report_contains_every_run_and_axes(tmp_path):
    sweep = tmp_path / "continuation_fixture"
    bpb = make_sweep(sweep)
    runs = load_runs(sweep)
    assert len(runs) == 5
    axes = find_axes(runs)
    assert axes == ["seed", "tokenizer.mode"]  # run_name/run_dir differ too but are bookkeeping
    path = build_report(sweep)
    md = path.read_text()
    for r in runs:
        assert r.name in md
    assert "failed" in md and "sample_v1" in md
    for png in ("val_bpb.png", "continuation.png", "bytes_per_token.png"):
        assert (path.parent / png).stat().st_size > 5000
    # per-variant mean ± std over seeds, computed from the fixture values
    for mode in ("viterbi", "sample"):
        vals = [bpb[(mode, s)] for s in (1, 2)]
        assert f"mode={mode} | 2 | {np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}" in md
    assert "### heal_k1" in md and "### plain" in md


def test_report_over_several_sweeps(tmp_path):
    a, b = tmp_path / "sweep_a", tmp_path / "sweep_b"
    make_sweep(a, modes=("viterbi",), seeds=(1,))
    make_sweep(b, modes=("sample",), seeds=(1, 2))
    md = build_report([a, b], out=tmp_path / "combined").read_text()
    for d in (a, b):
        for r in load_runs(d):
            assert f"{d.name}/{r.name}" in md
    assert "mode=viterbi | 1 |" in md and "mode=sample | 2 |" in md
