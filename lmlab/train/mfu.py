"""The device peak behind ``train/mfu`` and the summary's ``mfu`` (issue 11 item 4).

``peak_flops(device, precision)``: peak FLOP/s of ``device`` for a Lightning precision string, or None.
It defers to ``lmlab.model.flops.peak_flops`` (GPU bf16 table, cached CPU matmul peak measured by
``scripts/bench/peak.py``) when that module is present, and is None otherwise: no guessed figure is
ever reported. Convention (``TaskModule.mfu``): training FLOPs = 3 x forward FLOPs per token.
"""

from __future__ import annotations

from typing import Optional


def peak_flops(device, precision: str = "32-true") -> Optional[float]:
    try:
        from lmlab.model.flops import peak_flops as _peak
    except ImportError:  # the peak table lives on another branch until it is merged
        return None
    dtype = "bfloat16" if "bf16" in str(precision) else "float32"
    try:
        return _peak(device, dtype=dtype)
    except Exception:  # noqa: BLE001 - an unreadable cache must not stop training; MFU is then unknown
        return None
