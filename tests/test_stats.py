"""Report statistics (issue 13 item 3): axes, seed aggregates, paired bootstrap, pivots, labels."""

from __future__ import annotations

import math

import pytest

from lmlab.eval.stats import compare, drop_constant, label, paired_bootstrap, pivot, swept_axes, variants

ATT_EXTRA = {"mha": {}, "mla": {"attention.kv_lora_rank": 64, "attention.rope_head_dim": 16}}


def run(att, pos, seed, bpb, **extra):
    cfg = {"attention.name": att, "pos.name": pos, "seed": seed, "model.d_model": 64,
           "run_name": f"{att}-{pos}-{seed}", "trainer.num_threads": seed, "logger.project": "x",
           **ATT_EXTRA[att], **extra}
    return {"config": cfg, "summary": {"val_bpb": bpb, "step": 100}}


# val bpb = base(att, pos) + seed effect shared by every variant (what pairing cancels)
BASE = {("mha", "rope"): 2.00, ("mha", "rope2d"): 1.95, ("mla", "rope"): 1.90, ("mla", "rope2d"): 1.80}
SEED_EFFECT = {1: 0.00, 2: 0.10, 3: -0.05, 4: 0.20}
GRID = [run(a, p, s, BASE[(a, p)] + SEED_EFFECT[s]) for (a, p) in BASE for s in SEED_EFFECT]


def test_axes_are_the_swept_choices_only():
    # seed, run identity (run_name, threads, logger) and keys implied by attention.name are not axes
    assert swept_axes(GRID) == ["attention.name", "pos.name"]
    more = GRID + [run("mha", "rope", 1, 2.0, **{"optim.lr": 0.01})]
    assert swept_axes(more) == ["attention.name", "pos.name", "optim.lr"]


def test_implied_keys_give_way_to_the_choice_that_implies_them():
    runs = [{"config": {"experiment.variant": v, "tokenizer.name": t, "tokenizer.mode": m, "seed": 1},
             "summary": {"val_bpb": 1.0}}
            for v, t, m in [("viterbi", "unigram", "viterbi"), ("sample", "unigram", "sample"),
                            ("sp_sample", "sentencepiece", None)]]
    assert swept_axes(runs) == ["experiment.variant"]


def test_variants_aggregate_seeds():
    vs = {v.label: v for v in variants(GRID)}
    assert set(vs) == {"mha / rope", "mha / rope2d", "mla / rope", "mla / rope2d"}
    v = vs["mla / rope2d"]
    vals = [1.80 + e for e in SEED_EFFECT.values()]
    assert v.n == 4
    assert v.mean == pytest.approx(sum(vals) / 4)
    mu = sum(vals) / 4
    assert v.std == pytest.approx(math.sqrt(sum((x - mu) ** 2 for x in vals) / 3))


def test_one_seed_has_no_error_bar_and_no_interval():
    runs = [run("mha", "rope", 1, 2.0), run("mla", "rope", 1, 1.9)]
    vs = variants(runs)
    assert all(v.n == 1 and v.std is None for v in vs)
    (d,) = compare(runs, baseline="mha")
    assert d.n_pairs == 1 and d.mean == pytest.approx(-0.1)
    assert d.lo is None and d.hi is None and not d.significant


def test_constant_paired_difference_excludes_zero_although_seeds_overlap():
    # every seed: mla/rope2d is exactly 0.2 below mha/rope, while the seed spread (0.25) is larger
    diffs = {d.label: d for d in compare(GRID, baseline="mha / rope")}
    d = diffs["mla / rope2d"]
    assert d.n_pairs == 4 and d.mean == pytest.approx(-0.2)
    assert d.lo == pytest.approx(-0.2) and d.hi == pytest.approx(-0.2)
    assert d.significant
    assert "mha / rope" not in diffs


def test_interval_contains_the_true_mean_difference_and_zero_when_noise_dominates():
    true = 0.05
    noise = [0.3, -0.3, 0.2, -0.2, 0.1, -0.1]  # mean 0: the sample mean difference is exactly true
    base = [run("mha", "rope", s, 2.0 + 0.01 * s) for s in range(6)]
    var = [run("mla", "rope", s, 2.0 + 0.01 * s + true + noise[s]) for s in range(6)]
    (d,) = compare(base + var, baseline={"attention.name": "mha"})
    assert d.mean == pytest.approx(true)
    assert d.lo < true < d.hi
    assert d.lo < 0 < d.hi and not d.significant


def test_pairing_uses_only_common_seeds():
    runs = [run("mha", "rope", s, 2.0) for s in (1, 2, 3)] + [run("mla", "rope", s, 1.5 + s) for s in (2, 3, 9)]
    (d,) = compare(runs, baseline="mha")
    assert d.n_pairs == 2 and d.mean == pytest.approx(((3.5 - 2.0) + (4.5 - 2.0)) / 2)


def test_bootstrap_is_seeded():
    d = [0.1, -0.3, 0.25, 0.05, -0.12]
    assert paired_bootstrap(d, seed=7) == paired_bootstrap(d, seed=7)
    assert paired_bootstrap(d, seed=7) != paired_bootstrap(d, seed=8)
    lo, hi = paired_bootstrap(d)
    assert min(d) <= lo < sum(d) / len(d) < hi <= max(d)
    assert paired_bootstrap([0.3]) is None


def test_unknown_baseline_lists_the_variants():
    with pytest.raises(ValueError, match=r"'mha / rope'.*'mla / rope2d'"):
        compare(GRID, baseline="gqa / rope")


def test_repeated_seed_in_a_variant_is_refused():
    with pytest.raises(ValueError, match="two runs with seed=1"):
        variants([run("mha", "rope", 1, 2.0), run("mha", "rope", 1, 2.1), run("mla", "rope", 1, 2.0)])


def test_pivot_of_two_axes():
    p = pivot(GRID, "attention.name", "pos.name")
    assert p.rows == ["mha", "mla"] and p.cols == ["rope", "rope2d"]
    mean_seed = sum(SEED_EFFECT.values()) / 4
    for i, a in enumerate(p.rows):
        for j, q in enumerate(p.cols):
            assert p.mean[i][j] == pytest.approx(BASE[(a, q)] + mean_seed)
            assert p.n[i][j] == 4
    partial = pivot([r for r in GRID if r["config"]["attention.name"] == "mha" or r["config"]["pos.name"] == "rope"],
                    "attention.name", "pos.name")
    assert partial.mean[1][1] is None and partial.n[1][1] == 0


def test_pivot_refuses_to_average_over_a_third_axis():
    runs = GRID + [run(a, p, s, 1.0, **{"optim.lr": 0.01}) for (a, p) in BASE for s in (1,)]
    with pytest.raises(ValueError, match="optim.lr also varies"):
        pivot(runs, "attention.name", "pos.name")
    p = pivot(runs, "attention.name", "pos.name", where={"optim.lr": 0.01})
    assert p.mean == [[1.0, 1.0], [1.0, 1.0]]


def test_labels_are_short():
    assert label({"attention.name": "mla", "pos.name": "rope2d"}) == "mla / rope2d"
    assert label({"optim.lr": 0.003, "optim.warmup_steps": 50}) == "lr=0.003 / warmup_steps=50"
    assert label({"model.dropout": 0.1, "attention.dropout": 0.0}) == "model.dropout=0.1 / attention.dropout=0"


def test_constant_columns_are_dropped():
    rows = [{"variant": "a", "d_model": 64, "val_bpb": 1.0, "note": None},
            {"variant": "b", "d_model": 64, "val_bpb": 1.2, "note": None}]
    assert drop_constant(rows) == [{"variant": "a", "val_bpb": 1.0}, {"variant": "b", "val_bpb": 1.2}]
    assert drop_constant(rows, keep=["d_model"])[0] == {"variant": "a", "d_model": 64, "val_bpb": 1.0}


def test_identity_keys_cover_the_run_name_exclusions():
    from pathlib import Path

    from omegaconf import OmegaConf

    from lmlab.config import CONF_DIR
    from lmlab.eval.stats import IDENTITY

    exclude = OmegaConf.load(Path(CONF_DIR) / "config.yaml").hydra.job.config.override_dirname.exclude_keys
    assert set(exclude) <= set(IDENTITY)


def test_summary_rows_for_the_report_table():
    from lmlab.eval.stats import summary_rows

    rows = {r["variant"]: r for r in summary_rows(GRID, baseline="mha / rope")}
    assert list(rows) == ["mha / rope", "mha / rope2d", "mla / rope", "mla / rope2d"]
    b = rows["mha / rope"]
    assert b["diff"] == 0.0 and b["lo"] is None and not b["beyond_noise"] and b["n"] == 4
    r = rows["mla / rope"]
    assert r["diff"] == pytest.approx(-0.10) and r["lo"] == pytest.approx(-0.10) and r["beyond_noise"]
    assert r["mean"] == pytest.approx(1.90 + sum(SEED_EFFECT.values()) / 4) and r["std"] > 0.1
