"""Run identity (issue 13 item 2): run names, sweep folder names, resume= without quoting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lmlab.config import (
    CONF_DIR,
    RUN_NAME_MAX,
    prepare_argv,
    resume_target,
    run_name_from_overrides,
    sweep_name_from_overrides,
)

ROOT = Path(__file__).resolve().parent.parent
EXCLUDE = list(OmegaConf.load(Path(CONF_DIR) / "config.yaml").hydra.job.config.override_dirname.exclude_keys)


def composed_run_name(overrides: list[str]) -> str:
    """run_name exactly as train.py resolves it: Hydra's compose API with the hydra config set."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    OmegaConf.register_new_resolver("lmlab_run_name", run_name_from_overrides, replace=True)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.run_name


def test_results_neutral_keys_stay_out_of_composed_names():
    name = composed_run_name([
        "trainer.num_threads=1", "logger=wandb", "logger.project=x", "trainer.progress_bar=true",
        "trainer.log_every=5", "pos=rope2d", "data.num_workers=2", "attention=mla", "cache_dir=/tmp/c",
    ])
    # group choices first, then the rest; data.num_workers changes the batches, so it stays
    assert name == "attention=mla,pos=rope2d,data.num_workers=2"
    assert composed_run_name([]) == "default"


def test_name_is_independent_of_override_order():
    a = run_name_from_overrides(["model.d_model=64", "pos=rope", "attention=gqa", "seed=3"], EXCLUDE)
    b = run_name_from_overrides(["seed=3", "attention=gqa", "model.d_model=64", "pos=rope"], EXCLUDE)
    assert a == b == "attention=gqa,pos=rope,model.d_model=64,seed=3"


def test_paths_and_plus_prefixes_are_readable():
    assert run_name_from_overrides(["data=text", "data.paths=[/a/x.txt,b.txt]", "++optim.lr=0.01"]) == \
        "data=text,data.paths=[_a_x.txt,b.txt],optim.lr=0.01"
    # Hydra's comma-joined override_dirname (the old input) splits at top-level commas only
    assert run_name_from_overrides("data.paths=[a,b],attention=mla") == "attention=mla,data.paths=[a,b]"


def test_long_names_keep_whole_overrides_and_a_unique_hash():
    ov = ["attention=mla", "pos=rope2d"] + [f"tokenizer.vocab_size_option_{i}=value{i}" for i in range(12)]
    name = run_name_from_overrides(ov)
    assert len(name) <= RUN_NAME_MAX
    assert name.startswith("attention=mla,pos=rope2d,tokenizer.vocab_size_option_0=value0,")
    kept, _, tail = name.rpartition(",+")
    assert all(part in ov for part in kept.split(","))  # no override cut in the middle
    n_more = int(tail.split("more-")[0])
    assert len(kept.split(",")) + n_more == len(ov)
    other = run_name_from_overrides(ov[:-1] + ["tokenizer.vocab_size_option_11=other"])
    assert other != name and other.rsplit("-", 1)[0] == name.rsplit("-", 1)[0]


def test_sweep_names_from_swept_keys():
    assert sweep_name_from_overrides(["attention=mha,gqa", "pos=rope,rope2d", "trainer.max_steps=300"]) == \
        "sweep-attention-pos"
    assert sweep_name_from_overrides(["optim.lr=range(1,3)", "seed=1"]) == "sweep-optim.lr"
    assert sweep_name_from_overrides(["hydra.sweeper.params.optim.lr=interval(0.001,0.01)"]) == "sweep-optim.lr"
    assert sweep_name_from_overrides(["attention=mha"]) is None
    assert sweep_name_from_overrides(["data.paths=[a,b]"]) is None  # a list value is not a sweep


def test_prepare_argv_names_ad_hoc_sweeps_only():
    argv = ["train.py", "-m", "attention=mha,gqa", "pos=rope,rope2d"]
    env = "+hydra.job.env_set.LMLAB_SWEPT_KEYS='attention,pos'"
    assert prepare_argv(argv) == [*argv, "sweep_name=sweep-attention-pos", env]
    # argparse needs the overrides contiguous: the additions go beside them, before a trailing flag
    assert prepare_argv(["train.py", "attention=mha,gqa", "-m"]) == \
        ["train.py", "attention=mha,gqa", "sweep_name=sweep-attention",
         "+hydra.job.env_set.LMLAB_SWEPT_KEYS='attention'", "-m"]
    # a named sweep keeps its name; its jobs still name the swept keys first
    assert prepare_argv(["train.py", "-m", "attention=mha,gqa", "sweep_name=mine"])[-1] == \
        "+hydra.job.env_set.LMLAB_SWEPT_KEYS='attention'"
    assert prepare_argv(["train.py", "-m", "experiment=continuation_quick", "seed=1,2"])[-1] == \
        "+hydra.job.env_set.LMLAB_SWEPT_KEYS='seed'"
    for kept in (["train.py", "attention=mha,gqa"], ["train.py", "attention=mha"], ["train.py", "-m", "seed=1"]):
        assert prepare_argv(kept) == kept


def test_swept_keys_lead_the_name():
    ov = ["attention=mla", "pos=rope2d", "model.d_model=64", "optim.lr=0.01"]
    assert run_name_from_overrides(ov, EXCLUDE, {"optim.lr": "interval(0.001,0.1)"}) == \
        "optim.lr=0.01,attention=mla,pos=rope2d,model.d_model=64"
    assert run_name_from_overrides(ov, EXCLUDE, None, {"LMLAB_SWEPT_KEYS": "model.d_model,pos"}) == \
        "model.d_model=64,pos=rope2d,attention=mla,optim.lr=0.01"


def test_prepare_argv_quotes_resume_values_hydra_would_parse():
    p = "outputs/attention=mla,pos=rope2d/checkpoints/last.ckpt"
    assert prepare_argv(["train.py", f"resume={p}"]) == ["train.py", f"resume='{p}'"]
    for same in ("resume=auto", "resume=false", "resume=outputs/default/checkpoints/last.ckpt", f"resume='{p}'"):
        assert prepare_argv(["train.py", same]) == ["train.py", same]
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (o,) = OverridesParser.create().parse_overrides(prepare_argv(["x", f"resume={p}"])[1:])
    assert o.value() == p


def test_compose_takes_unquoted_resume_paths(compose):
    p = "outputs/attention=mla,pos=rope2d/checkpoints/last.ckpt"
    assert compose([f"resume={p}"]).resume == p


def test_resume_target_accepts_run_names_and_dirs(tmp_path):
    run = tmp_path / "attention=mla,pos=rope2d"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    last = str(run / "checkpoints" / "last.ckpt")
    folder = str(run / "checkpoints")  # resolve_resume takes its newest loadable checkpoint
    assert resume_target("attention=mla,pos=rope2d", str(tmp_path)) == folder
    assert resume_target(str(run), "elsewhere") == folder
    assert resume_target(last, "elsewhere") == last
    assert resume_target("auto", str(tmp_path)) == "auto" and resume_target(False, str(tmp_path)) is False
    assert resume_target("missing", str(tmp_path)) == "missing"  # resolve_resume names it


@pytest.mark.slow
def test_adhoc_multirun_gets_a_named_sweep_and_resume_takes_an_unquoted_path(tiny_overrides, tmp_path):
    args = [a for a in tiny_overrides if not a.startswith(("trainer.max_steps", "trainer.val_every"))]
    args += ["trainer.max_steps=2", "trainer.val_every=2", "trainer.num_threads=1"]
    r = subprocess.run([sys.executable, "train.py", "-m", *args, "attention=mha,gqa"],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    sweep = tmp_path / "sweep-attention"
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert [j.split(",")[0] for j in jobs] == ["attention=gqa", "attention=mha"], jobs  # swept key first
    assert not any("num_threads" in j or "progress_bar" in j for j in jobs)
    summary = json.loads((sweep / jobs[0] / "summary.json").read_text())
    assert summary["sweep_name"] == "sweep-attention"

    ckpt = sweep / jobs[0] / "checkpoints" / "last.ckpt"
    assert "=" in str(ckpt) and "," in str(ckpt)
    base = [a for a in args if not a.startswith("trainer.max_steps")] + ["attention=gqa", "trainer.max_steps=4"]
    for i, resume in enumerate([str(ckpt), f"sweep-attention/{jobs[0]}"]):  # a path, then a run name
        r = subprocess.run([sys.executable, "train.py", *base, f"run_name=cont{i}", f"resume={resume}"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"resuming from {ckpt} at step 2" in r.stdout
        assert json.loads((tmp_path / f"cont{i}" / "summary.json").read_text())["step"] == 4
