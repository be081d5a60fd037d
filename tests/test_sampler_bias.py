"""scripts/findings/sampler_bias.py: its exact v1 distribution is the real sampler's, and its string
picker and TV are what the finding in docs/results.md says they are."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lmlab.tokenizers.lattice import all_segmentations, exact_distribution, random_toy_model, toy_model

_spec = importlib.util.spec_from_file_location(
    "sampler_bias", Path(__file__).resolve().parents[1] / "scripts" / "findings" / "sampler_bias.py")
sb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sb)


def test_watching_gives_the_duel_chain_probabilities():
    """SPEC §2: three equal-score candidates into one end: the last to arrive wins 1/2, the others 1/4."""
    m = toy_model({"watch": -3.0, "ing": -3.0, "wat": -3.0, "ching": -3.0, "w": -3.0, "atching": -3.0},
                  all_bytes=True, char_starts=False)
    d = sb.v1_distribution(m, b"watching", alpha=50.0)  # byte paths (score -10 each) get ~0
    top = sorted(d.items(), key=lambda kv: -kv[1])[:3]
    assert [ids for ids, _ in top] == [(0, 1), (2, 3), (4, 5)]  # watch·ing, wat·ching, w·atching
    assert [q for _, q in top] == pytest.approx([0.5, 0.25, 0.25], abs=1e-9)
    assert sum(d.values()) == pytest.approx(1.0, abs=1e-12)
    assert sb.tv(exact_distribution(m, b"watching", 50.0), d) == pytest.approx(1 / 6, abs=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_exact_v1_matches_the_compiled_sampler(seed):
    rng = np.random.default_rng(seed)
    m = random_toy_model(rng, n_pieces=20)
    text = bytes(rng.choice(list(b"abc"), size=9).astype(np.uint8).tolist())
    for alpha in (0.2, 1.0):
        exact = sb.v1_distribution(m, text, alpha)
        assert set(exact) <= {ids for ids, _ in all_segmentations(m, text)}
        assert sum(exact.values()) == pytest.approx(1.0, abs=1e-12)
        n = 20_000
        emp = sb.empirical(m, text, "sample_v1", alpha, rng.integers(0, 2**63, size=n))
        assert sb.tv(emp, exact) < 3 * np.sqrt(len(exact) / n)  # sampling noise only
        perfect = sb.empirical(m, text, "sample", alpha, rng.integers(0, 2**63, size=n))
        assert sb.tv(perfect, exact_distribution(m, text, alpha)) < 3 * np.sqrt(len(exact) / n)


def test_v1_is_biased_on_a_real_lattice_shape_and_exact_at_large_alpha():
    rng = np.random.default_rng(7)
    m = random_toy_model(rng, n_pieces=30)
    text = b"abcabcabca"
    assert sb.tv(sb.v1_distribution(m, text, 0.3), exact_distribution(m, text, 0.3)) > 0.01
    best = max(all_segmentations(m, text), key=lambda t: t[1])[0]
    assert sb.v1_distribution(m, text, 1e4).get(best, 0.0) == pytest.approx(1.0, abs=1e-9)
    assert sb.count_segmentations(m, text) == len(all_segmentations(m, text))


def test_string_picker_is_seeded_unique_and_in_range():
    texts = ["the king is dead\nlong live the king, my lord\n", "中文 words here and there"]
    a = sb.pick_strings(texts, 10, seed=3)
    assert a == sb.pick_strings(texts, 10, seed=3) and len(a) == len(set(a)) == 10
    assert all(4 <= len(s.encode()) <= 12 and "\n" not in s for s in a)
    assert all(any(s in t for t in texts) for s in a)  # real substrings of the text
