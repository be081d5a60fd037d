"""One source of defaults: the yamls are what runs use; every dataclass default must equal its yaml.

Fixed groups compare with the default choice (model=micro, optim=muon, trainer=cpu, logger=csv, the
probe block of config.yaml); variant groups compare each yaml with its registered class's ``Config``.
Any key in one and not the other, or any differing value, fails."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from lmlab import config as C

CONF = Path(C.CONF_DIR)


def _defaults(cls) -> dict:
    """The declared defaults (before any __post_init__ derivation, e.g. head_dim: null)."""
    return {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
            for f in dataclasses.fields(cls) if f.init}


def _drift(cls, data: dict) -> list[str]:
    d = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for k, v in _defaults(cls).items()}
    data = {k: v for k, v in data.items() if k != "defaults"}
    out = []
    for k in sorted(set(d) | set(data)):
        if k not in data:
            out.append(f"{k}: in the dataclass ({d[k]!r}), not in the yaml")
        elif k not in d:
            out.append(f"{k}: in the yaml, not in the dataclass")
        elif d[k] != data[k]:
            out.append(f"{k}: dataclass {d[k]!r}, yaml {data[k]!r}")
    return out


def _variant_yamls():
    C.load_variants()
    return [(g, p) for g in C.VARIANT_GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


@pytest.mark.parametrize("group,path", _variant_yamls(), ids=lambda x: getattr(x, "stem", x))
def test_variant_yaml_equals_its_config_defaults(group, path):
    data = yaml.safe_load(path.read_text())
    cls = C.VARIANT_GROUPS[group].get(data["name"]).Config
    assert _drift(cls, data) == []


@pytest.mark.parametrize("cls,rel", [(C.ModelConfig, "model/micro.yaml"), (C.OptimConfig, "optim/muon.yaml"),
                                     (C.TrainerConfig, "trainer/cpu.yaml"), (C.LoggerConfig, "logger/csv.yaml")])
def test_fixed_group_default_yaml_equals_the_dataclass(cls, rel):
    data = yaml.safe_load((CONF / rel).read_text())
    if cls is C.OptimConfig:  # optim/muon.yaml (the default) extends adamw.yaml with its own keys
        data = {**yaml.safe_load((CONF / "optim/adamw.yaml").read_text()), **data}
    assert _drift(cls, data) == []


def test_top_level_keys_equal_the_run_config():
    top = yaml.safe_load((CONF / "config.yaml").read_text())
    assert _drift(C.ProbeConfig, top["probe"]) == []
    run = C.RunConfig()
    for k in ("seed", "sweep_name", "out_dir", "resume", "cache_dir"):
        assert getattr(run, k) == top[k], k
    default_choices = {k: v for d in top["defaults"] if isinstance(d, dict) for k, v in d.items()}
    assert default_choices["model"] == "micro" and default_choices["trainer"] == "cpu"


def test_gpu_and_ddp_trainers_state_only_their_differences(compose, monkeypatch):
    import torch

    cpu = compose([]).trainer
    # composing trainer=gpu checks for a GPU (a config error on a CPU machine): pretend there are 8
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for name, diff in (("gpu", {"accelerator", "precision", "max_steps", "val_every"}),
                       ("ddp", {"accelerator", "precision", "max_steps", "val_every", "devices", "strategy"})):
        data = yaml.safe_load((CONF / "trainer" / f"{name}.yaml").read_text())
        assert set(data) - {"defaults"} == diff - ({"accelerator", "precision", "max_steps", "val_every"}
                                                   if name == "ddp" else set())
        t = compose([f"trainer={name}"]).trainer
        changed = {f.name for f in dataclasses.fields(t) if getattr(t, f.name) != getattr(cpu, f.name)}
        assert changed == diff, name


def test_saved_config_shows_derived_values_not_null(compose):
    from lmlab.config import to_dict

    d = to_dict(compose(["attention=mla", "model.d_model=64", "model.n_head=4"]))
    assert d["model"]["head_dim"] == 16
    assert (d["attention"]["kv_lora_rank"], d["attention"]["rope_head_dim"]) == (64, 8)
    assert d["attention"]["nope_head_dim"] == d["attention"]["v_head_dim"] == 16
    explicit = to_dict(compose(["model.d_model=64", "model.n_head=4", "model.head_dim=8"]))
    assert explicit["model"]["head_dim"] == 8
