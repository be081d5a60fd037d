"""scripts/findings/attention_cache.py on a fake sweep directory: it groups runs by attention variant,
computes mean/std over seeds and the paired interval against mha with lmlab's statistics, takes cache
bytes from the variants' own formulas, skips incomplete runs, and writes the plot and JSON."""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from lmlab.api import compose
from lmlab.config import to_dict
from lmlab.eval import stats

_spec = importlib.util.spec_from_file_location(
    "attention_cache", Path(__file__).resolve().parents[1] / "scripts" / "findings" / "attention_cache.py")
ac = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ac)

# val bits/byte per (variant, seed): mqa is worse than mha by 0.10 +- 0.01 on every seed (beyond noise),
# vq differs from mha by -0.02, +0.03, -0.01 (an interval that holds 0); mla misses seed 2 (incomplete)
BPB = {
    "mha": {0: 2.50, 1: 2.60, 2: 2.55},
    "mqa": {0: 2.61, 1: 2.70, 2: 2.655},
    "vq": {0: 2.48, 1: 2.63, 2: 2.54},
    "mla": {0: 2.45, 1: 2.58},
}


def _write_run(sweep: Path, variant: str, seed: int, bpb: float | None) -> None:
    run = compose("experiment=attention_cache", f"experiment.variant={variant}", f"seed={seed}")
    d = sweep / f"experiment.variant={variant},seed={seed}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(to_dict(run), sort_keys=False))
    if bpb is not None:
        (d / "summary.json").write_text(json.dumps({"val_bpb": bpb, "vocab_size": 2048, "wall_time_s": 1.0}))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep") / "attention_cache"
    for v, by_seed in BPB.items():
        for s, x in by_seed.items():
            _write_run(root, v, s, x)
    _write_run(root, "mla", 2, None)  # started, never finished: not counted
    return root


def test_groups_seeds_and_intervals(sweep):
    res = ac.analyse(sweep)
    by = {v["variant"]: v for v in res["variants"]}
    assert [v["variant"] for v in res["variants"]] == ["mha", "mla", "mqa", "vq"]  # baseline, then by cache
    assert res["runs"] == 11
    assert by["mla"]["n"] == 2 and by["mla"]["seeds"] == [0, 1]
    assert by["mha"]["mean"] == pytest.approx(2.55)
    assert by["mha"]["std"] == pytest.approx(0.05)
    assert by["mqa"]["diff_vs_baseline"] == pytest.approx(0.105)
    assert by["mqa"]["beyond_noise"] and by["mqa"]["lo"] > 0
    assert by["vq"]["diff_vs_baseline"] == pytest.approx(0.0)
    assert not by["vq"]["beyond_noise"] and by["vq"]["lo"] < 0 < by["vq"]["hi"]
    # the interval is lmlab's paired bootstrap, not a re-implementation
    lo, hi = stats.paired_bootstrap([BPB["mqa"][s] - BPB["mha"][s] for s in range(3)])
    assert (by["mqa"]["lo"], by["mqa"]["hi"]) == pytest.approx((lo, hi))
    assert by["mla"]["pairs"] == 2


def test_cache_and_parameters_come_from_the_variants(sweep):
    by = {v["variant"]: v for v in ac.analyse(sweep)["variants"]}
    # micro-derived shape of the experiment: 2 layers, 4 heads of 32, fp32
    assert by["mha"]["cache_bytes_per_token"] == 4 * 2 * (2 * 4 * 32)
    assert by["mqa"]["cache_bytes_per_token"] == 4 * 2 * (2 * 32)
    assert by["mla"]["cache_bytes_per_token"] == 4 * 2 * (128 + 16)  # d_c + d_r
    assert by["vq"]["cache_bytes_per_token"] == 0 and by["vq"]["state_bytes"] > 0
    assert by["mha"]["state_bytes"] == 0
    assert by["vq"]["pos"] == "none" and by["mha"]["pos"] == "rope"
    # ffn_dim per variant matches the non-embedding parameters within 0.1%
    base = by["mha"]["params_non_embedding"]
    for v in by.values():
        assert abs(v["params_non_embedding"] / base - 1) < 1e-3, v["variant"]


def test_writes_plot_json_and_table(sweep, tmp_path, capsys):
    decode = {"settings": {"d_model": 128, "n_head": 4, "threads": 1, "device": "cpu"},
              "decode": {"mha": {"256": {"tok_s": 100.0}, "1024": {"tok_s": 80.0}},
                         "vq": {"256": {"tok_s": 50.0}, "1024": {"tok_s": 49.0}}}}
    (tmp_path / "dec.json").write_text(json.dumps(decode))
    out = tmp_path / "fig"
    assert ac.main([str(sweep), "--decode", str(tmp_path / "dec.json"), "--out", str(out)]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 1000
    res = json.loads((tmp_path / "fig.json").read_text())
    assert res["decode"]["decode"]["vq"]["1024"]["tok_s"] == 49.0
    table = capsys.readouterr().out
    assert "| mqa |" in table and "worse, beyond noise" in table
    assert "| vq |" in table and "within noise" in table


def test_missing_baseline_is_one_clear_line(tmp_path):
    root = tmp_path / "s"
    _write_run(root, "mqa", 0, 2.6)
    with pytest.raises(SystemExit, match="baseline attention.name=mha has no complete run"):
        ac.analyse(root)
