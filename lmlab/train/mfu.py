"""The device peak behind ``train/mfu`` and the summary's ``mfu`` (issue 11 item 4).

``peak_flops(device, precision, cache_dir)``: ``lmlab.model.flops.peak_flops`` for a Lightning precision
string (bf16 precisions read the bf16 peak, every other the float32 one): the GPU bf16 table, or on
CPU the matmul peak measured by ``scripts/bench/peak.py`` and cached; None when unknown or when the
cache cannot be read -- then MFU is None, never a guess. Convention (``TaskModule.mfu``): training
FLOPs = 3 x forward FLOPs per token (``lmlab.model.flops.flops_per_token``).
"""

from __future__ import annotations

from typing import Optional


def peak_flops(device, precision: str = "32-true", cache_dir: str = "") -> Optional[float]:
    from lmlab.model.flops import peak_flops as _peak

    dtype = "bfloat16" if "bf16" in str(precision) else "float32"
    try:
        return _peak(device, dtype=dtype, cache_dir=cache_dir)
    except (OSError, ValueError):  # an unreadable cache must not stop training; MFU is then unknown
        return None
