"""Tuning built in (issue 13 item 5): Hydra's Optuna sweeper runs trials of train.py and reports the best."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_tune_quick_composes_with_the_optuna_sweeper(compose):
    r = subprocess.run([sys.executable, "train.py", "experiment=tune_quick", "--cfg", "hydra"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    sweeper = yaml.safe_load(r.stdout)["hydra"]["sweeper"]
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["direction"] == "minimize"
    assert set(sweeper["params"]) == {"optim.muon_lr", "optim.lr", "optim.warmup_steps", "data.batch_size"}
    run = compose(["experiment=tune_quick"])
    assert run.sweep_name == "tune_quick" and run.trainer.early_stop.enabled


@pytest.mark.slow
def test_two_trial_optuna_sweep_reports_the_best_run(tiny_overrides, tmp_path):
    args = [a for a in tiny_overrides if not a.startswith(("trainer.max_steps", "trainer.val_every"))]
    r = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/sweeper=optuna_lmlab", "hydra.sweeper.n_trials=2",
         *args, "trainer.max_steps=3", "trainer.val_every=3", "optim.lr=tag(log, interval(1e-3, 3e-2))"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    sweep = tmp_path / "sweep-optim.lr"  # named from the swept key
    trials = [p for p in sweep.iterdir() if (p / "summary.json").exists()]
    assert len(trials) == 2, sorted(p.name for p in sweep.iterdir())
    bpb = {p: json.loads((p / "summary.json").read_text())["val_bpb"] for p in trials}
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(min(bpb.values()))
    best_dir = min(bpb, key=bpb.get)
    assert best_dir.name.startswith(f"optim.lr={best['best_params']['optim.lr']},")  # the swept key leads
