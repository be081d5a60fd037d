"""scripts/bench/gpu.py --smoke runs end to end on CPU (issue 11 item 7): every attention variant at
both lengths measured without error, and the default-recipe run's val bits/byte reported."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_smoke(tmp_path, cache_dir):
    out = tmp_path / "gpu.json"
    r = subprocess.run([sys.executable, "scripts/bench/gpu.py", "--smoke", "--device", "cpu", "--out", str(out),
                        "--cache-dir", cache_dir], cwd=ROOT, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(out.read_text())
    variants = sorted(p.stem for p in (ROOT / "conf" / "attention").glob("*.yaml"))
    rows = result["rows"]
    assert sorted({row["attention"] for row in rows}) == variants
    assert {row["T"] for row in rows} == {64, 128}
    assert not [row for row in rows if "error" in row or "skipped" in row]
    assert all(row["tokens_per_s"] > 0 and row["flops_per_token"] > 0 for row in rows)
    assert "| mha | 64 |" in r.stdout  # the markdown table
    bpb = result["recipe"]["val_bpb"]
    assert result["recipe"]["step"] == 3 and math.isfinite(bpb) and bpb > 0
