"""Bad input for data=digits is a config error at start-up that names the key to change (issue 5)."""

import pytest

from lmlab.config import ConfigError

BASE = ["data=digits", "task=image_text", "model.d_model=32", "model.n_layer=2", "model.n_head=4"]


def problems(compose, *overrides) -> list[str]:
    with pytest.raises(ConfigError) as e:
        compose([*BASE, *overrides])
    return e.value.problems


def test_default_digits_config_is_valid(compose):
    run = compose(BASE)
    assert run.data.patch == 2 and run.task.image_head == "categorical"
    from lmlab.registry import DATA

    assert DATA.get("digits").task == "image_text"


def test_patch_that_does_not_divide_the_image(compose):
    ps = problems(compose, "data.patch=3")
    assert any("data.patch=3" in p and "does not divide" in p for p in ps)


def test_caption_longer_than_the_context(compose):
    # 16 patches + 4 specials + "this is a seven." (16 bytes) = 36 slots
    ps = problems(compose, "model.seq_len=30")
    assert any("model.seq_len=30" in p and "caption" in p for p in ps)
    compose([*BASE, "model.seq_len=44"])  # the longest template fits in 44 slots
    ps = problems(compose, "model.seq_len=44", "data.eval_template='a rather long caption for the digit {word}.'")
    assert any(p.startswith("data.eval_template") and "model.seq_len=44" in p for p in ps)


def test_learned_table_too_short_for_the_sequence(compose):
    ps = problems(compose, "pos=learned", "pos.max_len=32", "model.seq_len=64")
    assert any("pos.max_len" in p and "digits" in p for p in ps)


def test_rotary_positions_on_quantized_keys_are_refused(compose):
    ps = problems(compose, "attention=vq", "pos=rope2d")
    assert any("vq" in p and "pos.name=rope2d" in p for p in ps)


def test_bad_template_and_bad_patch_are_reported_together(compose):
    ps = problems(compose, "data.patch=5", "data.train_templates=['this is {digit}']")
    assert any("data.patch=5" in p for p in ps)
    assert any(p.startswith("data.train_templates[0]") for p in ps)


@pytest.mark.parametrize("exp", ["pos_multimodal", "pos_multimodal_quick", "pos_multimodal_seeds",
                                 "pos_multimodal_probe"])
def test_sweep_experiments_validate_for_every_swept_choice(compose, exp):
    import itertools
    from pathlib import Path

    import yaml

    from lmlab.config import CONF_DIR

    params = yaml.safe_load((Path(CONF_DIR) / "experiment" / f"{exp}.yaml").read_text())["hydra"]["sweeper"]["params"]
    keys = [k for k in params if k != "seed"]  # seeds do not change validity
    for combo in itertools.product(*(str(params[k]).split(",") for k in keys)):
        run = compose([f"experiment={exp}", *(f"{k}={v}" for k, v in zip(keys, combo))])
        assert run.data.name == "digits" and run.sweep_name == exp


def test_subgrid_holdout_is_validated_naming_the_key(compose):
    run = compose([*BASE, "data.subgrid_holdout=[3x3,4x4]"])
    assert run.data.subgrids() == ([(2, 2), (2, 3), (2, 4), (3, 2), (3, 4), (4, 2), (4, 3)], [(3, 3), (4, 4)])
    assert compose(BASE).data.subgrids() is None
    for bad, words in (("[5x5]", "not a sub-grid"), ("[1x3]", "not a sub-grid"), ("[three]", "HxW"),
                       ("[]", "holds out nothing"), ("[3x3,3x3]", "twice")):
        ps = problems(compose, f"data.subgrid_holdout={bad}")
        assert any(p.startswith("data.subgrid_holdout=") and words in p for p in ps), (bad, ps)
    every = "[" + ",".join(f"{h}x{w}" for h in range(2, 5) for w in range(2, 5)) + "]"
    assert any("nothing is left to train on" in p for p in problems(compose, f"data.subgrid_holdout={every}"))


def test_learned_positions_refuse_a_held_out_size_that_reaches_untrained_positions(compose):
    # with one short training template, a 4x4 held-out image reaches positions no training crop reaches
    ps = problems(compose, "pos=learned", "data.subgrid_holdout=[4x4]", "data.train_templates=['{numeral}']",
                  "data.eval_template='this is a {word}.'")
    assert any("pos.name=learned cannot take the sub-grid probe" in p and "data.subgrid_holdout" in p for p in ps)
    compose([*BASE, "pos=learned", "data.subgrid_holdout=[3x3]"])  # interpolation: positions all trained
    compose([*BASE, "pos=rope_tie", "data.subgrid_holdout=[4x4]", "data.train_templates=['{numeral}']"])
