"""Model FLOPs per token, device peak FLOP/s, and model FLOPs utilisation (MFU).

MFU = model FLOPs per token × tokens/s ÷ the device's peak FLOP/s (PaLM, Chowdhery et al. 2022, App. B).

What ``flops_per_token`` counts (one multiply-add = 2 FLOPs; training = forward + backward = 3 ×
forward, the usual convention): the forward count is ``Transformer.flops_per_token`` -- each attention
class's own formula (``Attention.flops_per_token``: its projections + scores and weighted values against
``context`` keys), the MLPs and the LM head; tested equal to torch's FlopCounterMode count. The full
context is counted, not the causal half, as in PaLM's 6N + 12·n_layer·h·d·T, so figures compare with
the published ones. Not counted: norms, softmax, activations, rotary, biases, the optimizer step.

Peaks (``peak_flops``): a table of dense bf16 tensor-core peaks of known accelerators (sparsity
figures halved away; sources below) matched by the CUDA device name, and on CPU the matmul peak
measured by ``scripts/bench/peak.py`` and cached as json in the lmlab cache directory. Unknown
devices give None, and so does ``mfu`` then: no guessed figure is ever reported.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

# Dense (no 2:4 sparsity) BF16 tensor-core peaks, FLOP/s, from NVIDIA's datasheets (the sparse figures
# printed there are twice these): H100/H200 "NVIDIA H100 Tensor Core GPU" and "NVIDIA H200 Tensor
# Core GPU" datasheets (SXM 1,979 / PCIe 1,513 / NVL 1,671 TFLOPS with sparsity; H200 NVL 1,671),
# "NVIDIA A100 Tensor Core GPU" datasheet (312 TFLOPS, 624 sparse), "NVIDIA L4" datasheet (242 sparse),
# "NVIDIA L40S" datasheet (733 sparse), "NVIDIA L40" datasheet (362 sparse), "NVIDIA A10" datasheet
# (250 sparse). Order matters: the first pattern that matches the device name wins.
GPU_BF16_PEAKS: list[tuple[str, float]] = [
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100", 989e12),  # SXM5 (device name "NVIDIA H100 80GB HBM3")
    (r"H200.*NVL", 835e12),
    (r"H200", 989e12),
    (r"A100", 312e12),  # SXM4 and PCIe, 40 and 80 GB
    (r"L40S", 362e12),
    (r"L40\b", 181e12),
    (r"L4\b", 121e12),
    (r"A10\b", 125e12),
]

PEAK_FILE = "peak_flops.json"


def cache_root(cache_dir: str = "") -> Path:
    """The lmlab cache directory: ``cache_dir``, else $LMLAB_CACHE, else ~/.cache/lmlab."""
    return Path(cache_dir or os.environ.get("LMLAB_CACHE") or Path.home() / ".cache" / "lmlab")


def gpu_peak(name: str) -> Optional[float]:
    """Dense bf16 peak FLOP/s of a GPU by its CUDA device name, or None if it is not in the table."""
    for pattern, peak in GPU_BF16_PEAKS:
        if re.search(pattern, name):
            return peak
    return None


def cpu_key(dtype: str, threads: int) -> str:
    return f"{dtype}/threads={threads}"


def read_cpu_peaks(cache_dir: str = "") -> dict:
    path = cache_root(cache_dir) / PEAK_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def write_cpu_peak(flops: float, dtype: str, threads: int, cache_dir: str = "", **info) -> Path:
    """Record a measured CPU matmul peak (scripts/bench/peak.py) under ``dtype/threads=N``."""
    root = cache_root(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    peaks = read_cpu_peaks(cache_dir)
    peaks[cpu_key(dtype, threads)] = {"flops": flops, **info}
    path = root / PEAK_FILE
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(peaks, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def peak_flops(device="cpu", dtype: str = "bfloat16", threads: Optional[int] = None,
               cache_dir: str = "") -> Optional[float]:
    """Peak FLOP/s of ``device`` (a torch.device, "cuda:0", "cpu" or a GPU name), or None if unknown.

    GPU: the dense bf16 table (``dtype`` is not consulted: the table is bf16 only). CPU: the cached
    measurement for ``dtype`` ("float32" or "bfloat16") at ``threads`` torch threads (default: the
    current count); None if peak.py has not measured that setting.
    """
    if isinstance(device, str) and not re.match(r"^(cpu|cuda|mps|meta)(:\d+)?$", device):
        return gpu_peak(device)  # a device name such as "NVIDIA H100 80GB HBM3"
    device = torch.device(device)
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name(device))
    if device.type == "cpu":
        entry = read_cpu_peaks(cache_dir).get(cpu_key(dtype, threads or torch.get_num_threads()))
        return float(entry["flops"]) if entry else None
    return None


def flops_per_token(model: nn.Module, context: Optional[int] = None, training: bool = True) -> int:
    """Model FLOPs per token: the forward count of ``Transformer.flops_per_token`` (the attention classes'
    own formulas), × 3 for training (forward + backward). ``context`` defaults to ``seq_len``."""
    forward = model.flops_per_token(context, "prefill")
    return 3 * forward if training else forward


def mfu(flops_per_token: float, tokens_per_sec: float, peak: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation in [0, 1] (more if the peak is understated), or None without a peak."""
    if not peak:
        return None
    return flops_per_token * tokens_per_sec / peak
