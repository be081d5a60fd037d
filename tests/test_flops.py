"""Model FLOPs per token, device peaks and MFU (lmlab.model.flops; issue 11 item 4)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lmlab.config import ModelConfig, load_variants
from lmlab.model import flops
from lmlab.model.transformer import Transformer
from lmlab.registry import ATTENTION, POS

load_variants()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make(attn="mha", **model):
    mcfg = ModelConfig(**{"d_model": 32, "n_head": 4, "n_layer": 2, "seq_len": 16, "mlp": "gelu", **model})
    return Transformer(mcfg, ATTENTION.get(attn).Config(), POS.get("rope").Config(), 29)


def test_mha_matches_a_hand_count():
    model = make()
    C, H, D, n_layer, T, V = 32, 4, 8, 2, 16, 29
    attn_w = C * H * D + C * 2 * H * D + H * D * C  # q, kv, o projections
    mlp_w = C * 4 * C + 4 * C * C  # GELU MLP, ratio 4
    n_matmul = n_layer * (attn_w + mlp_w) + V * C  # + the (tied) LM head; embedding lookup excluded
    assert n_matmul == 25504
    attention = n_layer * 4 * H * D * T  # q·k scores and p·v per token, full context
    assert flops.flops_per_token(model, training=False) == 2 * n_matmul + attention == 55104
    assert flops.flops_per_token(model) == 3 * 55104
    assert flops.flops_per_token(model, context=32, training=False) == 2 * n_matmul + 2 * attention


def test_variants_use_their_own_attention_formula():
    mla = make("mla")
    own = sum(b.attn.attention_flops(16)["prefill"] for b in mla.blocks)
    assert own != 2 * 4 * 4 * 8 * 16
    assert flops.flops_per_token(mla, training=False) == mla.flops_per_token(16, "prefill")
    gqa, mha = make("gqa", n_head=4), make()  # fewer key/value heads: fewer FLOPs in the kv projection only
    att = [sum(b.attn.attention_flops(16)["prefill"] for b in m.blocks) for m in (gqa, mha)]
    assert att[0] == att[1]
    assert flops.flops_per_token(gqa, training=False) <= flops.flops_per_token(mha, training=False)


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA A10", 125e12), ("Tesla T4", None),
])
def test_gpu_table_by_device_name(name, peak):
    assert flops.peak_flops(name) == peak


def test_cpu_peak_is_read_from_the_cache_and_mfu(tmp_path):
    assert flops.peak_flops("cpu", "float32", 2, cache_dir=str(tmp_path)) is None  # never guessed
    flops.write_cpu_peak(5e10, "float32", 2, str(tmp_path), cpu="test")
    flops.write_cpu_peak(2e10, "bfloat16", 2, str(tmp_path))
    assert flops.peak_flops("cpu", "float32", 2, cache_dir=str(tmp_path)) == 5e10
    assert flops.peak_flops(torch.device("cpu"), "bfloat16", 2, cache_dir=str(tmp_path)) == 2e10
    assert flops.peak_flops("cpu", "float32", 1, cache_dir=str(tmp_path)) is None
    assert flops.mfu(1e6, 1e4, 5e10) == pytest.approx(0.2)
    assert flops.mfu(1e6, 1e4, None) is None


def test_peak_script_caches_a_measurement(tmp_path):
    cmd = [sys.executable, "scripts/bench/peak.py", "--threads", "1", "--dtypes", "float32", "--size", "128",
           "--seconds", "0.2", "--repeats", "2", "--cache-dir", str(tmp_path)]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=120,
                   env={**os.environ, "PYTHONPATH": ROOT})
    entry = json.loads((tmp_path / flops.PEAK_FILE).read_text())["float32/threads=1"]
    assert entry["flops"] > 1e8 and entry["size"] == 128  # even a slow core does 0.1 GFLOP/s
    assert flops.peak_flops("cpu", "float32", 1, cache_dir=str(tmp_path)) == entry["flops"]
