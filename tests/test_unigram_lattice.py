"""The unigram lattice on toy vocabularies: Viterbi is the brute-force argmax, perfect sampling
(SPEC §3) has the exact distribution, v1 (SPEC §2) has its known bias, and the compiled pass equals
the pure-Python reference draw for draw."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from lmlab.tokenizers import lattice as L
from lmlab.tokenizers import lattice_fast as F


def tv(counts: Counter, exact: dict) -> float:
    n = sum(counts.values())
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in keys)


def rand_text(rng, alphabet: bytes, n: int) -> bytes:
    return bytes(rng.choice(np.frombuffer(alphabet, np.uint8), size=n).astype(np.uint8))


def draw(model, text: bytes, mode: str, alpha: float, n: int, seed: int = 0) -> Counter:
    seeds = np.random.default_rng(seed).integers(0, 2**63, size=n)
    return Counter(tuple(F.segment(model, text, mode, alpha, int(s)).tolist()) for s in seeds)


def test_double_array_trie_finds_exactly_the_keys():
    rng = np.random.default_rng(0)
    keys = {bytes(rng.integers(0, 256, size=int(rng.integers(1, 7))).astype(np.uint8)) for _ in range(400)}
    keys = sorted(keys)
    base, check, value = L.build_double_array(keys, list(range(len(keys))))

    def lookup(key: bytes) -> int:
        s = 0
        for c in key:
            t = base[s] + c
            if t >= len(check) or check[t] != s:
                return -1
            s = t
        return int(value[s])

    assert [lookup(k) for k in keys] == list(range(len(keys)))
    for k in keys[:100]:  # proper prefixes and extensions that are not keys are absent
        for probe in (k[:-1], k + b"\x00", k + b"\xff"):
            if probe and probe not in keys:
                assert lookup(probe) == -1


def test_viterbi_is_the_brute_force_argmax():
    rng = np.random.default_rng(1)
    for _ in range(200):
        model = L.random_toy_model(rng, n_pieces=int(rng.integers(3, 20)))
        text = rand_text(rng, b"abc", int(rng.integers(1, 13)))
        ids = L.segment_ref(model, text)
        best_ids, best_score = L.brute_force_best(model, text)
        score = sum(float(model.scores[i]) for i in ids)
        assert score == pytest.approx(best_score, abs=1e-4)
        assert b"".join(_piece(model, i) for i in ids) == text
        assert F.segment(model, text).tolist() == ids


def _piece(model, i: int) -> bytes:
    return next(k for k, v in model.pieces.items() if v == i)


@pytest.mark.parametrize("mode", ["sample", "sample_v1"])
def test_compiled_pass_equals_reference_draw_for_draw(mode):
    rng = np.random.default_rng(2)
    for _ in range(60):
        model = L.random_toy_model(rng, n_pieces=int(rng.integers(3, 20)))
        text = rand_text(rng, b"abc", int(rng.integers(0, 30)))
        for alpha in (0.0, 0.3, 1.0, 1e4):
            for seed in rng.integers(0, 2**63, size=3):
                assert F.segment(model, text, mode, alpha, int(seed)).tolist() == \
                    L.segment_ref(model, text, mode, alpha, int(seed))


def test_compiled_pass_equals_reference_with_characters_and_fallback_edges():
    # SentencePiece-style: edges start at character starts; "中" and "é" have no piece, so they
    # enter as one fallback edge that emits their UTF-8 bytes.
    model = L.toy_model({"a": -2.0, "b": -2.5, "ab": -3.0, "ba": -3.2, "中a": -4.0, "aé": -6.0},
                        all_bytes=True, fallback=True)
    rng = np.random.default_rng(3)
    alphabet = ["a", "b", "中", "é", "😀"]
    for _ in range(100):
        text = "".join(rng.choice(alphabet, size=int(rng.integers(0, 12)))).encode()
        for mode in L.MODES:
            for alpha in (0.0, 0.5, 2.0):
                seed = int(rng.integers(0, 2**63))
                ids = F.segment(model, text, mode, alpha, seed).tolist()
                assert ids == L.segment_ref(model, text, mode, alpha, seed)
                assert b"".join(_piece(model, i) for i in ids) == text


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_perfect_sampling_has_the_exact_distribution(alpha):
    n = 20000
    rng = np.random.default_rng(4)
    model = L.toy_model({"a": -2.0, "b": -2.2, "ab": -3.1, "ba": -2.9, "aba": -4.0, "bab": -5.5,
                         "abab": -5.0})
    for text in (b"ababa", b"abab"):
        exact = L.exact_distribution(model, text, alpha)
        assert 5 <= len(exact) <= 16
        counts = draw(model, text, "sample", alpha, n, seed=int(rng.integers(1 << 30)))
        assert tv(counts, exact) < 3 / np.sqrt(n), (text, alpha)
    if alpha == 0.0:  # uniform over every segmentation, and every one is drawn
        assert len(counts) == len(exact)


def test_perfect_sampling_on_random_vocabularies():
    n = 20000
    rng = np.random.default_rng(5)
    checked = 0
    while checked < 3:
        model = L.random_toy_model(rng, alphabet=b"ab", n_pieces=6, max_len=3)
        text = rand_text(rng, b"ab", 6)
        exact = L.exact_distribution(model, text, 0.7)
        if not 4 <= len(exact) <= 16:
            continue
        assert tv(draw(model, text, "sample", 0.7, n, seed=checked), exact) < 3 / np.sqrt(n)
        checked += 1


def test_watching_case_v1_is_biased_and_perfect_sampling_is_not():
    # SPEC §2: three equally likely segmentations of "watching"; candidates reach the end longest
    # last piece first (w·atching, wat·ching, watch·ing), so v1 gives 1/4, 1/4, 1/2.
    model = L.toy_model({"w": -1.0, "wat": -1.0, "watch": -1.0, "atching": -1.0, "ching": -1.0,
                         "ing": -1.0})
    text = b"watching"
    segs = {"w atching": (0, 3), "wat ching": (1, 4), "watch ing": (2, 5)}
    exact = L.exact_distribution(model, text, 1.0)
    assert sorted(exact) == sorted(segs.values()) and all(abs(p - 1 / 3) < 1e-12 for p in exact.values())
    n = 20000
    v2 = draw(model, text, "sample", 1.0, n)
    v1 = draw(model, text, "sample_v1", 1.0, n)
    for ids in segs.values():
        assert abs(v2[ids] / n - 1 / 3) < 0.015
    assert abs(v1[segs["w atching"]] / n - 0.25) < 0.015
    assert abs(v1[segs["wat ching"]] / n - 0.25) < 0.015
    assert abs(v1[segs["watch ing"]] / n - 0.5) < 0.015
    assert tv(v2, exact) < 3 / np.sqrt(n) < tv(v1, exact)


def test_limits_of_alpha():
    rng = np.random.default_rng(6)
    checked = 0
    while checked < 50:  # alpha -> infinity is Viterbi, on texts whose best path wins clearly
        model = L.random_toy_model(rng, n_pieces=10)
        text = rand_text(rng, b"abc", 12)
        scores = sorted((s for _, s in L.all_segmentations(model, text)), reverse=True)
        if len(scores) > 1 and scores[0] - scores[1] < 0.01:  # 1e4 * gap >= 100
            continue
        checked += 1
        vit = F.segment(model, text).tolist()
        for mode in ("sample", "sample_v1"):
            assert F.segment(model, text, mode, 1e4, int(rng.integers(1 << 62))).tolist() == vit


def test_same_seed_same_sample_and_seeds_differ():
    model = L.toy_model({"a": -2.0, "b": -2.0, "ab": -3.0, "ba": -3.0}, all_bytes=True)
    text = b"abababababbababa"
    a = [F.segment(model, text, "sample", 0.5, s).tolist() for s in range(20)]
    b = [F.segment(model, text, "sample", 0.5, s).tolist() for s in range(20)]
    assert a == b
    assert len({tuple(x) for x in a}) > 10


def test_no_path_is_a_clear_error():
    model = L.toy_model({"a": -1.0, "ab": -1.0})
    with pytest.raises(ValueError, match="no piece ends at byte"):
        F.segment(model, b"abb")
    with pytest.raises(ValueError, match="no piece ends at byte"):
        L.segment_ref(model, b"abb")
    assert F.segment(model, b"").tolist() == [] == L.segment_ref(model, b"")
