"""Every shipped yaml composes and validates; bad configs fail early with every problem named."""

from pathlib import Path

import pytest

from lmlab.config import CONF_DIR, ConfigError, build_config
from lmlab.registry import UnknownVariantError

GROUPS = ["model", "attention", "pos", "tokenizer", "data", "optim", "trainer", "logger", "debug", "experiment"]


def _yamls(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in _yamls(g)])
def test_every_yaml_composes_and_validates(compose, group, name):
    overrides = [f"{group}={name}"]
    if group == "data" and name == "text":
        overrides.append("data.paths=[x.txt]")
    if group == "data" and name == "hf":
        overrides.append("data.path=somewhere")
    try:
        run = compose(overrides)
    except ConfigError as e:  # a pairing the defaults can't serve must say why, naming keys
        assert "=" in str(e) or "." in str(e)
        pytest.skip(f"{group}={name} is incompatible with the defaults: {e}")
    assert run is not None


def test_unknown_key_wrong_type_and_illegal_combination_reported_together(compose):
    with pytest.raises(ConfigError) as ei:
        compose(["+model.foo=1", "model.n_layer=abc", "model.n_head=5", "optim.lr=-1"])
    msg = str(ei.value)
    assert "5 problems" in msg  # the rotary check also sees head dim 256//5 = 51
    assert "model.foo: unknown key" in msg
    assert "model.n_layer: expected an integer" in msg
    assert "model.n_head=5 does not divide model.d_model=256" in msg
    assert "optim.lr=-1.0 must be positive" in msg


def test_odd_rotary_dimension_is_a_config_error(compose):
    with pytest.raises(ConfigError, match="head dim .* is odd"):
        compose(["pos=rope", "model.d_model=60", "model.n_head=4"])


def test_literal_values_are_checked(compose):
    with pytest.raises(ConfigError, match="model.mlp='relu' is not one of"):
        compose(["model.mlp=relu"])


def test_unknown_variant_lists_available():
    cfg = {"attention": {"name": "foo"}, "pos": {"name": "rope"},
           "tokenizer": {"name": "sentencepiece"}, "data": {"name": "pystdlib"}}
    with pytest.raises(ConfigError) as ei:
        build_config(cfg)
    assert "unknown attention 'foo'; available:" in str(ei.value)
    assert "mha" in str(ei.value)


def test_registry_error_message():
    from lmlab.registry import POS

    with pytest.raises(UnknownVariantError, match="unknown pos 'nope'; available: .*rope"):
        POS.get("nope")


def test_missing_group_is_named():
    with pytest.raises(ConfigError, match="tokenizer: missing"):
        build_config({"attention": {"name": "mha"}, "pos": {"name": "rope"}, "data": {"name": "pystdlib"}})
