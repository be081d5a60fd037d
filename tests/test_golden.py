"""Per-step losses of two tiny runs equal the committed golden files bit for bit (see tests/golden.py;
regenerate with ``python -m tests.golden`` when a numerics change is intended)."""

from __future__ import annotations

import json

import golden
import pytest


@pytest.mark.parametrize("case", sorted(golden.CASES))
def test_losses_equal_the_golden_file(case, tmp_path):
    want = json.loads(golden.path(case).read_text())["losses"]
    got = golden.losses(case, str(tmp_path / "out"), str(tmp_path / "cache"))
    diff = [f"step {i}: golden {float.fromhex(w)!r}, now {float.fromhex(g)!r}"
            for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert len(got) == len(want) and not diff, (
        "losses differ from tests/golden/" + case + ".json (regenerate with `python -m tests.golden` if "
        "the change is intended):\n" + "\n".join(diff[:5]))
