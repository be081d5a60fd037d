"""The sweep report (``python -m lmlab report``) on fabricated sweep directories whose values are known:
every run listed, seeds aggregated, paired differences from a baseline with the verdict the numbers
call for, pivot tables, x axes computed from metrics.csv/summary/config, constant columns and plots
left out."""

import json

import numpy as np
import pytest
import yaml

from lmlab.cli import UsageError
from lmlab.cli import main as cli_main
from lmlab.cli.report import build_report, find_axes, load_runs, x_values
from lmlab.eval import stats


def _probe(rng, gap: float) -> dict:
    def kind(base):
        return {m: float(np.clip(base + rng.normal(0, 0.01), 0, 1)) for m in
                ("p_char", "p_word", "greedy_char", "greedy_word")} | {"dropped_max": 1e-4}

    out = {}
    for name in ("plain", "heal_k1"):
        b, m = kind(0.6), kind(0.6 - (gap if name == "plain" else 0.0))
        ref = kind(0.7) | {"greedy_char": float("nan"), "greedy_word": float("nan")}
        out[name] = {"boundary": b, "mid_token": m, "mid_token_ref": ref, "gap": {k: b[k] - m[k] for k in m},
                     "gap_matched": {k: ref[k] - m[k] for k in ("p_char", "p_word")}}
    return out | {"n_pairs": 10, "settings": {"n_prompts": 10}}


def make_sweep(root, modes=("viterbi", "sample"), seeds=(1, 2)):
    """tokenizer.mode x seed, with probe.json, plus one failed job."""
    rng = np.random.default_rng(0)
    bpb = {}
    for mode in modes:
        for seed in seeds:
            d = root / f"tokenizer.mode={mode},seed={seed}"
            (d / "checkpoints").mkdir(parents=True)
            cfg = {"model": {"d_model": 32}, "tokenizer": {"name": "unigram", "mode": mode, "alpha": 0.1},
                   "seed": seed, "run_name": d.name, "run_dir": str(d), "sweep_name": root.name}
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
            v = 2.0 + 0.1 * (mode == "sample") + 0.01 * seed
            bpb[(mode, seed)] = v
            rows = ["step,train/loss,val/loss,val/bpb,lr"]
            for step in (100, 200, 300):
                rows += [f"{step - 1},3.0,,,0.001", f"{step - 1},,2.5,{v + (300 - step) / 1000},"]
            (d / "metrics.csv").write_text("\n".join(rows) + "\n")
            summary = {"val_bpb": v, "val_loss": 2.5, "train_loss": 3.0, "step": 300, "tokens_per_sec": 1000.0,
                       "wall_time_s": 60.0, "train_bytes_per_token": 3.0 if mode == "sample" else 3.5,
                       "val_bytes_per_token": 3.5, "tokens_seen": 300 * 64}
            (d / "summary.json").write_text(json.dumps(summary))
            (d / "probe.json").write_text(json.dumps(_probe(rng, 0.3 if mode == "viterbi" else 0.05)))
    failed = root / "tokenizer.mode=sample_v1,seed=1"
    (failed / ".hydra").mkdir(parents=True)  # a job that failed validation: Hydra's config only
    (failed / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"tokenizer": {"name": "unigram", "mode": "sample_v1",
                                                                      "alpha": 0.1}, "seed": 1,
                                                        "run_name": failed.name}))
    (failed / "error.txt").write_text("boom\n")
    return bpb


# attention x pos x seed with chosen final values: mla/rope is 0.1 better on every seed (beyond
# noise); mha/alibi differs by +0.01, -0.02, +0.01 (within noise); mla/alibi ran one seed only.
FINAL = {
    ("mha", "rope"): {1: 2.00, 2: 2.10, 3: 2.20},
    ("mla", "rope"): {1: 1.90, 2: 2.00, 3: 2.10},
    ("mha", "alibi"): {1: 2.01, 2: 2.08, 3: 2.21},
    ("mla", "alibi"): {1: 1.95},
}


def make_grid(root, final=FINAL, base_cfg=None, val_every=40, steps=200):
    for (a, p), by_seed in final.items():
        for s, v in by_seed.items():
            d = root / f"attention={a},pos={p},seed={s}"
            d.mkdir(parents=True)
            cfg = json.loads(json.dumps(base_cfg)) if base_cfg else {"model": {"d_model": 32}}
            if base_cfg:  # a real config: each variant's own defaults
                cfg["attention"], cfg["pos"] = {"name": a}, {"name": p}
            else:
                cfg["attention"] = {"name": a, "kv_lora_rank": 16 if a == "mla" else None}  # implied by name
                cfg["pos"] = {"name": p}
            cfg.setdefault("trainer", {})["num_threads"] = s  # cannot change results: not an axis
            cfg.update({"seed": s, "run_name": d.name, "run_dir": str(d)})
            (d / "config.yaml").write_text(yaml.safe_dump(cfg))
            tps = 5000.0 if a == "mha" else 2500.0
            rows = ["step,train/loss,train/tokens_seen,train/tokens_per_sec,val/bpb"]
            for st in range(0, steps, 10):
                rows.append(f"{st},{2 + 3 * np.exp(-st / 50) + v - 2:.4f},{(st + 1) * 128},{tps if st else ''},")
                if st and st % val_every == 0:
                    rows.append(f"{st},,,,{v + (steps - st) / 1000:.4f}")
            rows.append(f"{steps - 1},,,,{v}")
            (d / "metrics.csv").write_text("\n".join(rows) + "\n")
            (d / "summary.json").write_text(json.dumps({
                "val_bpb": v, "train_loss": 2.1, "step": steps, "tokens_seen": steps * 128, "tokens_per_sec": tps,
                "wall_time_s": 30.0, "train_bytes_per_token": 3.4, "val_bytes_per_token": 3.4, "vocab_size": 400}))


def _row(md: str, label: str) -> list[str]:
    line = next(line for line in md.splitlines() if line.startswith(f"| {label} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_report_contains_every_run_axes_and_seed_aggregates(tmp_path):
    sweep = tmp_path / "continuation_fixture"
    bpb = make_sweep(sweep)
    runs = load_runs(sweep)
    assert len(runs) == 5
    assert find_axes(runs) == ["tokenizer.mode"]  # seed, run_name/run_dir differ too but are not axes
    path = build_report(sweep)
    md = path.read_text()
    for r in runs:
        assert r.name in md
    assert "failed" in md and "sample_v1" in md
    for png in ("curves.png", "continuation.png", "bytes_per_token.png"):  # the tokenizer is swept
        assert (path.parent / png).stat().st_size > 5000
    for mode in ("viterbi", "sample"):
        vals = [bpb[(mode, s)] for s in (1, 2)]
        row = _row(md, f"mode={mode}")
        assert row[1] == "2" and row[2] == f"{np.mean(vals):.4f} ± {np.std(vals, ddof=1):.4f}"
    assert "### heal_k1" in md and "### plain" in md
    # no default for tokenizer.mode in conf/: the baseline is the first in sorted order; 2 seeds
    # differing by -0.1 on both: the paired difference is -0.1, interval [-0.1, -0.1]
    assert "Baseline: **mode=sample** (first in sorted order" in md
    assert _row(md, "mode=sample")[3] == "baseline" and _row(md, "mode=viterbi")[3] == "-0.1000"
    assert "**better**, beyond noise" in _row(md, "mode=viterbi")[5]


def test_paired_differences_verdicts_pivot_and_n1(tmp_path):
    sweep = tmp_path / "attn_pos"
    make_grid(sweep)
    runs = load_runs(sweep)
    assert find_axes(runs) == ["attention.name", "pos.name"]  # kv_lora_rank is implied, threads ignored
    md = build_report(sweep, log=lambda s: None).read_text()
    assert "Baseline: **mha / rope** (the default config's choice" in md  # conf/config.yaml: mha, rope
    base = FINAL[("mha", "rope")]
    better = _row(md, "mla / rope")
    assert better[3] == "-0.1000" and better[4] == "[-0.1000, -0.1000]" and "**better**, beyond noise" in better[5]
    noise = _row(md, "mha / alibi")
    d = [FINAL[("mha", "alibi")][s] - base[s] for s in base]
    assert abs(np.mean(d)) < 1e-12 and noise[3] == "+0.0000" and noise[5] == "within noise"  # no "-0.0000"
    lo, hi = (float(x) for x in noise[4].strip("[]").split(","))
    assert lo < 0 < hi and (lo, hi) == pytest.approx(stats.paired_bootstrap(d), abs=1e-4)
    one = _row(md, "mla / alibi")
    assert one[1] == "1" and one[2] == "1.9500" and "±" not in one[2]  # no error bar from one run
    assert one[4] == "" and one[5].startswith("no interval")
    # the pivot of attention x pos: cell = mean over seeds (n)
    assert "| attention \\ pos | alibi | rope |" in md
    assert "| mla | 1.9500 (1) | 2.0000 (3) |" in md and "| mha | 2.1000 (3) | 2.1000 (3) |" in md
    # constant columns and the bytes/token plot are left out (the tokenizer is not swept)
    assert "bytes/token" not in md and "bytes/tok" not in md and "kv_lora_rank" not in md
    assert not (sweep / "report" / "bytes_per_token.png").exists()
    assert "tokens/s" in md  # differs (mha vs mla)


def test_baseline_and_where_select(tmp_path):
    sweep = tmp_path / "s"
    make_grid(sweep)
    md = build_report(sweep, baseline="attention=mla,pos=rope", log=lambda s: None).read_text()
    assert "Baseline: **mla / rope** (baseline= given" in md and _row(md, "mha / rope")[3] == "+0.1000"
    md = build_report(sweep, baseline="mla / rope", log=lambda s: None).read_text()
    assert _row(md, "mha / rope")[3] == "+0.1000"
    with pytest.raises(UsageError, match=r"baseline=mla / rop matches 0 variants \(did you mean `mla / rope`"):
        build_report(sweep, baseline="mla / rop")
    with pytest.raises(UsageError, match=r"atention: not a swept axis \(did you mean `attention`"):
        build_report(sweep, baseline="atention=mla")
    md = build_report(sweep, where="pos=rope", log=lambda s: None).read_text()
    assert "Swept axes: `attention.name`" in md and "alibi" not in md
    assert _row(md, "mla")[3] == "-0.1000"


def test_pivot_per_slice_of_a_third_axis(tmp_path):
    for lr, shift in ((0.001, 0.5), (0.003, 0.0)):
        d = tmp_path / f"lr{lr}"
        make_grid(d, {k: {s: v + shift for s, v in by.items()} for k, by in FINAL.items()})
        for cfg_path in d.glob("*/config.yaml"):
            cfg = yaml.safe_load(cfg_path.read_text())
            cfg["optim"] = {"lr": lr}
            cfg_path.write_text(yaml.safe_dump(cfg))
    md = build_report([tmp_path / "lr0.001", tmp_path / "lr0.003"], out=tmp_path / "r", log=lambda s: None).read_text()
    assert "Swept axes: `attention.name`, `pos.name`, `optim.lr`" in md
    assert "Baseline: **mha / rope / lr=0.003** (the default config's choice" in md  # optim/muon.yaml extends adamw.yaml
    assert _row(md, "mha / rope / lr=0.001")[3] == "+0.5000"
    low = md.split("### val bits/byte: attention × pos (lr=0.001)")[1].split("###")[0]
    assert "| mla | 2.4500 (1) | 2.5000 (3) |" in low
    high = md.split("### val bits/byte: attention × pos (lr=0.003)")[1].split("###")[0]
    assert "| mla | 1.9500 (1) | 2.0000 (3) |" in high
    assert "### val bits/byte: pos × lr (attention=mla)" in md


def test_x_axes_from_metrics_summary_and_config(tmp_path, compose):
    from conftest import TINY

    from lmlab.config import to_dict
    from lmlab.model.transformer import build_model

    run_cfg = compose(TINY)
    sweep = tmp_path / "s"
    make_grid(sweep, {("mha", "rope"): {1: 2.0}, ("mla", "rope"): {1: 1.9}}, base_cfg=to_dict(run_cfg))
    r = next(r for r in load_runs(sweep) if r.config["attention.name"] == "mha")
    steps = [0, 40, 190]
    assert list(x_values(r, steps, "tokens")) == [128.0, 41 * 128.0, 191 * 128.0]  # train/tokens_seen
    assert x_values(r, steps, "bytes") == pytest.approx(np.array([128, 41 * 128, 191 * 128]) * 3.4)
    # time: 5000 tokens/s measured from step 10 on, the first rate standing for the steps before it
    assert x_values(r, steps, "time") == pytest.approx(np.array([128, 41 * 128, 191 * 128]) / 5000.0)
    import torch

    with torch.device("meta"):
        fpt = build_model(run_cfg, 400).flops_per_token()  # vocab_size from summary.json
    assert x_values(r, steps, "flops") == pytest.approx(np.array([128, 41 * 128, 191 * 128]) * 3 * fpt)
    for x in ("steps", "tokens", "bytes", "time", "flops"):
        md = build_report(sweep, out=tmp_path / x, x=x, log=lambda s: None).read_text()
        assert "Not drawn" not in md and (tmp_path / x / "curves.png").stat().st_size > 5000
    # a config this lmlab cannot build has no FLOPs axis: said, not drawn wrong
    bad = tmp_path / "bad"
    make_grid(bad, {("mha", "rope"): {1: 2.0}, ("mla", "rope"): {1: 1.9}}, base_cfg={"model": {"no_such_key": 1}})
    md = build_report(bad, x="flops", log=lambda s: None).read_text()
    assert "Not drawn (no flops data): mha, mla." in md


def test_sparse_validation_warns(tmp_path):
    sweep = tmp_path / "s"
    make_grid(sweep, {("mha", "rope"): {1: 2.0}, ("mla", "rope"): {1: 1.9}}, val_every=1000)
    logs = []
    md = build_report(sweep, log=logs.append).read_text()
    assert "validated fewer than 3 times" in md and "trainer.val_every" in md
    assert any("fewer than 3 validations" in line for line in logs)
    make_grid(tmp_path / "ok", {("mha", "rope"): {1: 2.0}, ("mla", "rope"): {1: 1.9}})
    assert "fewer than" not in build_report(tmp_path / "ok", log=lambda s: None).read_text()


def test_report_over_several_sweeps(tmp_path):
    a, b = tmp_path / "sweep_a", tmp_path / "sweep_b"
    make_sweep(a, modes=("viterbi",), seeds=(1,))
    make_sweep(b, modes=("sample",), seeds=(1, 2))
    md = build_report([a, b], out=tmp_path / "combined").read_text()
    for d in (a, b):
        for r in load_runs(d):
            assert f"{d.name}/{r.name}" in md
    assert _row(md, "mode=viterbi")[1] == "1" and _row(md, "mode=sample")[1] == "2"


def test_command_line(tmp_path, capsys):
    sweep = tmp_path / "attention=x,pos=y"  # '=' and ',' in a directory name
    make_grid(sweep)
    assert cli_main(["report", str(sweep), "x=tokens", "baseline=mla / rope", f"out={tmp_path / 'r'}"]) == 0
    assert "Baseline: **mla / rope**" in (tmp_path / "r" / "report.md").read_text()
    assert cli_main(["report", str(sweep), "x=token"]) == 2
    err = capsys.readouterr().err
    assert "x=token: not an x axis (did you mean `tokens`" in err and "Traceback" not in err


def _probe_value(sweep, mode, seed, pv, kind, m):
    return json.loads((sweep / f"tokenizer.mode={mode},seed={seed}" / "probe.json").read_text())[pv][kind][m]


def test_probe_seed_statistics_paired_on_seeds_and_healing_within_runs(tmp_path):
    """The probe's seed statistics (issue 15): mean ± std over seeds, Δ vs the baseline paired by
    seed with a bootstrap interval, and healing's effect paired within each run -- each number
    recomputed here from the probe.json files."""
    sweep = tmp_path / "cont"
    seeds = (1, 2, 3)
    make_sweep(sweep, seeds=seeds)  # viterbi: mid-token p 0.3 below sample's (plain); healed: no gap
    md = build_report(sweep, baseline="mode=viterbi", log=lambda s: None).read_text()
    assert "### Seed statistics" in md and "#### plain: mean ± std over seeds, and Δ vs mode=viterbi" in md
    section = md.split("#### plain:")[1].split("#### heal_k1:")[0]
    v = [_probe_value(sweep, "viterbi", s, "plain", "mid_token", "p_char") for s in seeds]
    w = [_probe_value(sweep, "sample", s, "plain", "mid_token", "p_char") for s in seeds]
    row = _row(section, "mode=sample")
    header = [c.strip() for c in next(line for line in section.splitlines() if line.startswith("| variant"))
              .strip("|").split("|")]
    cell = dict(zip(header, row))
    assert cell["n"] == "3" and cell["p_char mid"] == f"{np.mean(w):.3f} ± {np.std(w, ddof=1):.3f}"
    d = np.subtract(w, v)
    lo, hi = stats.paired_bootstrap(d)
    assert cell["Δ p_char mid"] == f"{np.mean(d):+.3f} [{lo:+.3f}, {hi:+.3f}] *"  # ~ +0.25, beyond noise
    assert lo > 0.2
    base = dict(zip(header, _row(section, "mode=viterbi")))
    assert base["Δ p_char mid"] == "+0.000"  # the baseline against itself: no interval
    # healing: heal_k1 - plain on the same run; the fixture's viterbi runs gain ~0.3 at mid-token cuts
    heal = md.split("#### Healing's effect")[1]
    h = np.subtract([_probe_value(sweep, "viterbi", s, "heal_k1", "mid_token", "p_char") for s in seeds], v)
    lo, hi = stats.paired_bootstrap(h)
    assert _row(heal, "mode=viterbi (heal_k1)")[1] == f"{np.mean(h):+.3f} [{lo:+.3f}, {hi:+.3f}] *"


def test_val_bpb_at_equal_training_bytes(tmp_path):
    """x=bytes: each run's curve read at the largest byte count every run reaches (here the sampled
    runs' end: they read 3.0 bytes/token against viterbi's 3.5), by linear interpolation."""
    sweep = tmp_path / "cont"
    bpb = make_sweep(sweep, seeds=(1, 2, 3))
    md = build_report(sweep, baseline="mode=viterbi", x="bytes", log=lambda s: None).read_text()
    at = 299 * 64 * 3.0  # the last validation (step 299) of a sampled run, tokens from summary.json
    assert f"training text (bytes) = {at:,.6g}" in md
    table = md.split("## At equal training text (bytes)")[1].split("## Curves")[0]

    def curve_at(mode, seed, x):  # metrics.csv of make_sweep: val v + (300 - step) / 1000 at 99, 199, 299
        bpt = 3.0 if mode == "sample" else 3.5
        steps = np.array([99, 199, 299])
        return np.interp(x, steps * 64 * bpt, bpb[(mode, seed)] + (300 - (steps + 1)) / 1000)

    vit = [curve_at("viterbi", s, at) for s in (1, 2, 3)]
    smp = [curve_at("sample", s, at) for s in (1, 2, 3)]
    assert _row(table, "mode=viterbi")[2] == f"{np.mean(vit):.4f} ± {np.std(vit, ddof=1):.4f}"
    assert _row(table, "mode=sample")[3] == f"{np.mean(np.subtract(smp, vit)):+.4f}"
    assert _row(table, "mode=viterbi")[-1] == f"{at / (64 * 3.5):.0f}"  # step where viterbi read that much
    # at= beyond what the sampled runs read: they get no value, viterbi still does
    md = build_report(sweep, out=tmp_path / "r2", baseline="mode=viterbi", x="bytes", at=299 * 64 * 3.2,
                      log=lambda s: None).read_text()
    table = md.split("## At equal training text (bytes)")[1].split("## Curves")[0]
    assert _row(table, "mode=sample")[2] == "—" and _row(table, "mode=viterbi")[1] == "3"


def test_x_beyond_the_last_logged_step_is_extrapolated(tmp_path):
    """The last validation (step 200) follows the last training log (step 190): its x is the rate of
    the last logged interval carried on, not step 190's value."""
    sweep = tmp_path / "s"
    make_grid(sweep, {("mha", "rope"): {1: 2.0}})
    d = next(sweep.iterdir())
    rows = ["step,train/loss,train/tokens_seen,train/bytes_seen,val/bpb"]
    rows += [f"{s},3.0,{(s + 1) * 100},{(s + 1) * 300}," for s in range(0, 200, 10)] + ["200,,,,2.0"]
    (d / "metrics.csv").write_text("\n".join(rows) + "\n")
    r = load_runs(sweep)[0]
    assert list(x_values(r, [190, 200], "tokens")) == [19100.0, 20100.0]
    assert list(x_values(r, [190, 200], "bytes")) == [57300.0, 60300.0]
