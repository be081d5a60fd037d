"""experiment=continuation(_quick): every swept variant composes, validates, and builds the tokenizer
config its name promises; all variants share one tokenizer model (so one set of probe prompts)."""

import itertools
from pathlib import Path

import pytest
import yaml

from lmlab.config import CONF_DIR

EXPECT = {  # variant -> (tokenizer.name, sampling mode or sample flag)
    "viterbi": ("unigram", "viterbi"), "sample_v1": ("unigram", "sample_v1"), "sample": ("unigram", "sample"),
    "sample_a01": ("unigram", "sample"), "sample_a02": ("unigram", "sample"), "sample_a03": ("unigram", "sample"),
    "sp_sample": ("sentencepiece", True),
}


@pytest.mark.parametrize("exp", ["continuation", "continuation_quick"])
def test_every_swept_variant_validates(compose, exp):
    raw = yaml.safe_load((Path(CONF_DIR) / "experiment" / f"{exp}.yaml").read_text())
    params = raw["hydra"]["sweeper"]["params"]
    keys = [k for k in params if k != "seed"]
    shared = set()
    alphas = {}
    for combo in itertools.product(*(str(params[k]).split(",") for k in keys)):
        over = dict(zip(keys, combo))
        run = compose([f"experiment={exp}", *(f"{k}={v}" for k, v in over.items())])
        name, mode = EXPECT[over["experiment.variant"]]
        tok = run.tokenizer
        assert run.sweep_name == exp and tok.name == name
        assert (tok.sample if name == "sentencepiece" else tok.mode) == mode
        assert tok.vocab_size == raw["experiment"]["vocab_size"]
        # the SentencePiece model is trained from these settings: identical for every variant
        shared.add((tok.vocab_size, tok.model_type, tok.character_coverage, tok.split_by_whitespace,
                    tok.max_piece_length, tok.train_max_sentences))
        alphas[over["experiment.variant"]] = tok.alpha
    assert len(shared) == 1
    if "sample_a03" in alphas:
        assert (alphas["sample_a01"], alphas["sample_a02"], alphas["sample_a03"]) == (0.1, 0.2, 0.3)
