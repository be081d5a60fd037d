"""The sweep report's significance rule (SPEC §15.4) and table, on synthetic summaries."""

import json

from lmlab.multimodal import report


def test_difference_is_real_only_with_same_sign_in_all_seeds_and_beyond_two_std():
    base = {0: 2.00, 1: 2.02, 2: 1.98}
    delta, real = report.compare({s: v - 0.2 for s, v in base.items()}, base)
    assert real and abs(delta + 0.2) < 1e-12
    # same sign but within 2 std of the noise: not real
    assert not report.compare({0: 1.99, 1: 2.01, 2: 1.97}, base)[1]
    # large mean difference driven by one seed, signs disagree: not real
    assert not report.compare({0: 1.5, 1: 2.03, 2: 1.99}, base)[1]
    # a single seed is never enough
    assert not report.compare({0: 1.0}, {0: 2.0})[1]



def _write_summary(d, pos, seed, bpp, **extra):
    """A digits run directory holding only the summary.json the report reads (every metric = bpp)."""
    d.mkdir()
    s = {"task": "image_text", "pos": pos, "seed": seed, "image_head": "categorical", "patch": 2,
         "eval_split": "test", "best_step": 100, "ref_uniform_bpp": 4.09, "ref_marginal_bpp": 2.42,
         "ref_label_marginal_bpp": 2.2, "judge_acc": 0.96}
    s.update({f"test_{k}": bpp for k, _, _ in report.METRICS})
    s.update(test_img_bpp=bpp, **extra)
    (d / "summary.json").write_text(json.dumps(s))

def test_table_groups_runs_and_reports_paired_delta(tmp_path):
    for i, (pos, seed, bpp) in enumerate([("rope", 0, 2.0), ("rope", 1, 2.1), ("rope2d", 0, 1.9), ("rope2d", 1, 2.0)]):
        _write_summary(tmp_path / f"job{i}", pos, seed, bpp)
    runs = report.load_runs(str(tmp_path))
    text, refs = report.table(runs)
    rows = {line.split("|")[3].strip(): line for line in text.splitlines()[2:]}
    assert set(rows) == {"rope", "rope2d"}
    assert "-0.100" in rows["rope2d"] and "*" not in rows["rope2d"]  # 2 seeds, Δ = spread: not real
    assert "[-0.100, -0.100]" in rows["rope2d"]  # both seeds differ by exactly -0.1: the bootstrap interval
    assert "2.050 ± 0.071" in rows["rope"]
    report.build_report([str(tmp_path)], log=lambda s: None)
    assert (tmp_path / "report.png").stat().st_size > 0


def test_probe_runs_are_grouped_apart_with_a_paired_held_out_delta(tmp_path):
    rows = [("rope", 0, 2.0, 2.5, None), ("rope", 1, 2.1, 2.6, None),
            ("rope", 0, 2.2, 2.4, ["3x3"]), ("rope", 1, 2.3, 2.5, ["3x3"]),
            ("rope_tie", 0, 2.2, 2.7, ["3x3"]), ("rope_tie", 1, 2.3, 2.9, ["3x3"])]
    for i, (pos, seed, bpp, held, sub) in enumerate(rows):
        extra = {"test_heldout_img_bpp": held, "test_seen_img_bpp": bpp - 0.1} if sub else {}
        _write_summary(tmp_path / f"job{i}", pos, seed, bpp, subgrid_holdout=sub, **extra)
    text, _ = report.table(report.load_runs(str(tmp_path)))
    lines = [ln.split("|")[1:-1] for ln in text.splitlines()]
    head = [c.strip() for c in lines[0]]
    body = {(c[head.index("held out")].strip(), c[head.index("pos")].strip()): c for c in lines[2:]}
    assert set(body) == {("none", "rope"), ("3x3", "rope"), ("3x3", "rope_tie")}  # whole images apart
    tie = body[("3x3", "rope_tie")]
    # paired against the probe's own rope rows: held-out Δ = +0.35 (0.3 and 0.4; beyond 2 std, same sign:
    # real), whole-image Δ = 0
    assert tie[head.index("Δ held-out bpp vs rope")].strip() == "+0.350 *"
    assert tie[head.index("95% interval (held-out)")].strip() == "[+0.300, +0.400]"
    assert tie[head.index("Δ img bpp vs rope")].strip() == "+0.000"
    assert body[("3x3", "rope")][head.index("training sizes img bpp")].strip() == "2.150 ± 0.071"
    # the gap held-out − training sizes: rope 0.3, 0.3; rope_tie 0.6, 0.7 -> paired Δ +0.35
    assert body[("3x3", "rope")][head.index("held-out − training sizes")].strip() == "+0.300 ± 0.000"
    assert tie[head.index("Δ gap vs rope")].strip().startswith("+0.350")
    report.build_report([str(tmp_path)], log=lambda s: None)
    assert (tmp_path / "report.png").stat().st_size > 0
