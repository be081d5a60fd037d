"""Training controls (issue 11 item 3): trainer.compile, accumulate_grad_batches, max_time, precision;
and what a run reports about them: stopped_by, mfu, the progress wiring (issue 13 items 1, 5)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from lmlab.config import ConfigError
from lmlab.train.run import train


def quiet(*_):
    pass


def _dir(run) -> Path:
    return Path(run.out_dir) / run.run_name


@pytest.mark.parametrize("override, message", [
    ("trainer.precision=bf16", "trainer.precision='bf16' is not one of"),
    ("trainer.precision=16-mixed", "not supported on CPU: use bf16-mixed"),
    ("trainer.max_time=5min", "trainer.max_time='5min' must read DD:HH:MM:SS"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be >= 1"),
    ("trainer.strategy=fsdp", "trainer.strategy=fsdp needs a GPU"),
])
def test_controls_are_validated_up_front(compose, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose([override])


def test_accumulation_counts_micro_batches_and_resumes_exactly(compose, tiny_overrides):
    import lightning as L

    class CrashAt(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 4 and pl_module.batches_seen == 8:
                raise RuntimeError("simulated kill")

    acc = ["trainer.accumulate_grad_batches=2", "model.dropout=0.1"]
    full = compose(tiny_overrides + acc + ["run_name=full"])
    s = train(full, log=quiet)
    # max_steps counts optimizer steps; every micro-batch is counted in tokens and batches
    assert s["step"] == 6 and s["tokens_seen"] == 6 * 2 * 4 * 32
    from lmlab.train.checkpoint import read_checkpoint

    ck = read_checkpoint(_dir(full) / "checkpoints" / "last.ckpt")
    assert ck["lmlab"]["batches_seen"] == 12
    killed = compose(tiny_overrides + acc + ["run_name=killed"])
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(killed, log=quiet, callbacks=[CrashAt()])
    s2 = train(killed, log=quiet)  # resumes from step-3.ckpt (batches_seen 6)
    ck2 = read_checkpoint(_dir(killed) / "checkpoints" / "last.ckpt")
    assert ck2["lmlab"]["batches_seen"] == 12 and s2["tokens_seen"] == s["tokens_seen"]
    for k, v in ck["state_dict"].items():
        assert torch.equal(v, ck2["state_dict"][k]), k


def test_compiled_checkpoints_load_uncompiled_and_the_reverse(compose, tiny_overrides):
    """aot_eager (no C compiler, fast to build); inductor is the default backend for real runs."""
    from lmlab.train.checkpoint import load_checkpoint, read_checkpoint

    plain = compose(tiny_overrides + ["run_name=plain"])
    train(plain, log=quiet)
    # the reverse: an uncompiled run's checkpoint resumes into a compiled model
    comp = compose(tiny_overrides + ["run_name=comp", "trainer.compile=true", "trainer.compile_backend=aot_eager",
                                     f"resume={_dir(plain) / 'checkpoints' / 'step-3.ckpt'}"])
    train(comp, log=quiet)
    a = read_checkpoint(_dir(plain) / "checkpoints" / "last.ckpt")["state_dict"]
    b = read_checkpoint(_dir(comp) / "checkpoints" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    for k in a:  # steps 4-6 compiled continue the uncompiled run (same math, other kernels)
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    # a compiled run's checkpoint loads into an uncompiled model through every command's loader
    loaded = load_checkpoint(_dir(comp) / "checkpoints" / "last.ckpt")
    model = loaded.model if hasattr(loaded, "model") else loaded[0]
    assert not hasattr(model, "_compiled_call_impl") or model._compiled_call_impl is None
    w = {k[len("model."):]: v for k, v in b.items() if k.startswith("model.")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, w[k]), k


def test_max_time_stops_and_a_rerun_returns_at_once(compose, tiny_overrides):
    run = compose(tiny_overrides + ["trainer.max_steps=100000", "trainer.val_every=50",
                                    "trainer.max_time=00:00:00:02"])
    s = train(run, log=quiet)
    assert s["stopped_by"] == "max_time" and 0 < s["step"] < 100000
    summary = json.loads((_dir(run) / "summary.json").read_text())
    assert summary["stopped_by"] == "max_time"
    lines = []
    s2 = train(run, log=lines.append)
    assert s2 == summary and any("done already: stopped by max_time" in x for x in lines)


def test_early_stopped_run_records_it_and_a_rerun_returns_at_once(compose, tiny_overrides):
    # min_delta larger than any change: the second validation is "no improvement"
    run = compose(tiny_overrides + ["trainer.max_steps=30", "trainer.val_every=3", "trainer.early_stop.enabled=true",
                                    "trainer.early_stop.patience=1", "trainer.early_stop.min_delta=10"])
    s = train(run, log=quiet)
    assert s["stopped_by"] == "early_stop" and s["step"] == 6
    lines = []
    s2 = train(run, log=lines.append)
    assert s2["step"] == 6 and s2["stopped_by"] == "early_stop"
    assert any("done already: stopped by early_stop at step 6" in x for x in lines)


def test_summary_has_mfu_against_a_known_peak_and_none_otherwise(compose, tiny_overrides, monkeypatch):
    import lmlab.train.mfu as mfu

    run = compose(tiny_overrides + ["run_name=nopeak"])
    monkeypatch.setattr(mfu, "peak_flops", lambda device, precision="32-true", cache_dir="": None)
    assert train(run, log=quiet)["mfu"] is None
    monkeypatch.setattr(mfu, "peak_flops", lambda device, precision="32-true", cache_dir="": 1e13)
    run = compose(tiny_overrides + ["run_name=peak"])
    s = train(run, log=quiet)
    from lmlab.model.transformer import Transformer
    from lmlab.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(_dir(run) / "checkpoints" / "last.ckpt")
    model = loaded.model if hasattr(loaded, "model") else loaded[0]
    assert isinstance(model, Transformer)
    # 3 x forward FLOPs per token x tokens/s per device / peak
    assert s["mfu"] == pytest.approx(3 * model.flops_per_token() * s["tokens_per_sec"] / 1e13, rel=1e-9)
    import csv

    with open(_dir(run) / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/mfu")]
    assert rows and all(float(r["train/mfu"]) > 0 for r in rows)


def test_start_block_and_progress_lines_are_printed(compose, tiny_overrides, capsys):
    run = compose(tiny_overrides + ["run_name=lines"])
    lines = []
    train(run, log=lines.append)
    block = "\n".join(lines)
    for key in ("task", "model", "attention", "pos", "tokenizer", "precision", "threads", "run dir"):
        assert f"\n  {key}" in block or block.startswith(f"  {key}"), key
    out = capsys.readouterr().out
    assert "step 6/6" in out and "val bpb" in out  # LineProgress (stdout is not a terminal here)
    metrics = (_dir(run) / "metrics.csv").read_text().splitlines()[0]
    assert "loss_bar" not in metrics


def test_peak_follows_the_precision_and_the_run_cache(tmp_path):
    from lmlab.model.flops import write_cpu_peak
    from lmlab.train.mfu import peak_flops

    threads = torch.get_num_threads()
    write_cpu_peak(1.5e11, "float32", threads, cache_dir=str(tmp_path))
    write_cpu_peak(4.0e11, "bfloat16", threads, cache_dir=str(tmp_path))
    assert peak_flops("cpu", "32-true", str(tmp_path)) == 1.5e11
    assert peak_flops("cpu", "bf16-mixed", str(tmp_path)) == 4.0e11
    assert peak_flops("cpu", "32-true", str(tmp_path / "empty")) is None  # not measured: unknown
    (tmp_path / "peak_flops.json").write_text("{not json")
    assert peak_flops("cpu", "32-true", str(tmp_path)) is None  # unreadable: unknown, training goes on


def test_bf16_mixed_trains_on_cpu_with_float32_weights(compose, tiny_overrides):
    import math

    from lmlab.train.checkpoint import read_checkpoint

    run = compose(tiny_overrides + ["trainer.precision=bf16-mixed"])
    s = train(run, log=quiet)
    assert s["step"] == 6 and math.isfinite(s["val_bpb"]) and math.isfinite(s["train_loss"])
    w = read_checkpoint(_dir(run) / "checkpoints" / "last.ckpt")["state_dict"]
    # autocast computes in bf16; the weights (and the optimizer's updates) stay float32
    assert all(v.dtype == torch.float32 for k, v in w.items() if v.is_floating_point())


def test_mfu_above_one_is_not_recorded_and_names_the_peak_file(compose, tiny_overrides, monkeypatch, tmp_path):
    """A peak below what the run achieved (measured on a busy machine) would record MFU > 1: the summary
    and metrics say unknown instead, and one warning names the cache file to re-measure."""
    import lmlab.train.mfu as mfu

    monkeypatch.setattr(mfu, "peak_flops", lambda device, precision="32-true", cache_dir="": 1.0)
    run = compose(tiny_overrides + ["run_name=lowpeak", f"cache_dir={tmp_path}"])
    with pytest.warns(UserWarning, match=r"MFU not reported.*peak_flops\.json.*scripts/bench/peak\.py") as rec:
        s = train(run, log=quiet)
    assert s["mfu"] is None
    assert sum("MFU not reported" in str(w.message) for w in rec) == 1
    import csv

    with open(_dir(run) / "metrics.csv") as f:
        assert not [r for r in csv.DictReader(f) if r.get("train/mfu")]
