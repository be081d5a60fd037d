"""Every shipped yaml composes and validates; bad configs fail early with every problem named."""

from pathlib import Path

import pytest

from lmlab.config import CONF_DIR, ConfigError, build_config
from lmlab.registry import UnknownVariantError

GROUPS = ["model", "attention", "pos", "tokenizer", "data", "task", "optim", "trainer", "logger", "debug",
          "experiment"]

# The partner each yaml needs to form a valid run; every yaml is validated (none is skipped), and
# composing it *without* its partner must fail naming the key the partner sets.
PARTNERS = {
    ("attention", "vq"): ["pos=none"],
    ("tokenizer", "bytepiece"): ["tokenizer.model_path=model.json"],
    ("tokenizer", "hf"): ["tokenizer.path=."],  # any directory passes validation
    ("data", "text"): ["data.paths=[x.txt]"],
    ("data", "hf"): ["data.path=somewhere"],
    ("data", "digits"): ["task=image_text"],
    ("task", "image_text"): ["data=digits"],
}


def _yamls(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group,name", [(g, n) for g in GROUPS for n in _yamls(g)])
def test_every_yaml_composes_and_validates(compose, group, name):
    run = compose([f"{group}={name}", *PARTNERS.get((group, name), [])])
    if group not in ("debug", "experiment"):
        assert getattr(run, group) is not None


@pytest.mark.parametrize("group,name", sorted(PARTNERS))
def test_a_yaml_without_its_partner_names_what_to_set(compose, group, name):
    key = PARTNERS[(group, name)][0].split("=")[0]
    with pytest.raises(ConfigError) as ei:
        compose([f"{group}={name}"])
    assert key.split(".")[-1] in str(ei.value) or key in str(ei.value)


def test_data_and_task_mismatch_says_what_to_pick(compose):
    with pytest.raises(ConfigError, match="task=lm cannot train data=digits.*add task=image_text"):
        compose(["data=digits"])
    with pytest.raises(ConfigError, match="task=image_text cannot train data=shakespeare.*add task=lm"):
        compose(["task=image_text"])


def test_unknown_task_lists_available(compose):
    with pytest.raises(ConfigError, match="unknown task 'nope'; available: image_text, lm"):
        compose(["task.name=nope"])


def test_a_buggy_check_fails_loudly(compose, monkeypatch):
    """A check() that raises on a well-typed config is a bug: its exception propagates, never dropped."""
    from lmlab.config import OptimConfig

    def broken(self, run):
        raise ZeroDivisionError("bug in a check")

    monkeypatch.setattr(OptimConfig, "check", broken)
    with pytest.raises(ZeroDivisionError, match="bug in a check"):
        compose([])
    # beside a type problem the failure is still reported, as a problem naming the check
    with pytest.raises(ConfigError, match="OptimConfig.check could not run.*ZeroDivisionError"):
        compose(["model.n_layer=abc"])


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
