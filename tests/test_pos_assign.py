"""Position assigners (SPEC §8, §15.4): worked examples, gap symmetry, spacing, crops, M-RoPE ids."""

import random

import pytest
import torch

from lmlab.config import ModelConfig, load_variants
from lmlab.model.pos.assign import SCHEMES, assign_for, assign_positions
from lmlab.registry import POS

load_variants()
F64 = torch.float64


def image_after_text(scheme, L, h, w, n_axes=None):
    """Text 0..L, an h×w image, one text token: (last text pos, patches (h, w, A), next text pos)."""
    pos = assign_positions([("text", L + 1), ("image", h, w), ("text", 1)], scheme, n_axes, F64)
    A = pos.shape[1]
    assert torch.equal(pos[L], torch.full((A,), float(L), dtype=F64))
    return pos[L], pos[L + 1 : L + 1 + h * w].view(h, w, A), pos[-1]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_plain_text_is_n_n(scheme):
    pos = assign_positions([("text", 4), ("text", 3)], scheme, dtype=F64)
    n = torch.arange(7, dtype=F64)[:, None].expand_as(pos)
    assert torch.equal(pos, n)


def test_spec_worked_example_tie_v1():
    # SPEC §8: L = 5, w = 3, h = 2 -> first patch (9, 8), last (13, 14), next text 17, gaps (4, 3)
    last_text, patches, nxt = image_after_text("tie_v1", 5, h=2, w=3)
    assert patches[0, 0].tolist() == [9, 8]
    assert patches[-1, -1].tolist() == [13, 14]
    assert nxt.tolist() == [17, 17]
    assert (patches[0, 0] - last_text).tolist() == [4, 3]
    assert (nxt - patches[-1, -1]).tolist() == [4, 3]


def test_spec_worked_example_tie_v2():
    # SPEC §8: beta = (7, 6.5), first patch (8, 7.5), last (9, 9.5), next text 12, gaps (3, 2.5)
    last_text, patches, nxt = image_after_text("tie_v2", 5, h=2, w=3)
    assert patches[0, 0].tolist() == [8, 7.5]
    assert patches[-1, -1].tolist() == [9, 9.5]
    assert nxt.tolist() == [12, 12]
    assert (patches[0, 0] - last_text).tolist() == [3, 2.5]
    assert (nxt - patches[-1, -1]).tolist() == [3, 2.5]


@pytest.mark.parametrize("scheme", ["tie_v1", "tie_v2"])
def test_gap_symmetry_random(scheme):
    rng = random.Random(0)
    for _ in range(50):
        L, h, w = rng.randint(0, 40), rng.randint(1, 9), rng.randint(1, 9)
        last_text, patches, nxt = image_after_text(scheme, L, h, w)
        assert torch.equal(patches[0, 0] - last_text, nxt - patches[-1, -1]), (L, h, w)


def test_next_text_positions_random():
    rng = random.Random(1)
    for _ in range(50):
        L, h, w = rng.randint(0, 40), rng.randint(1, 9), rng.randint(1, 9)
        assert image_after_text("tie_v2", L, h, w)[2].tolist() == [L + w * h + 1] * 2  # equivalence
        assert image_after_text("tie_v1", L, h, w)[2].tolist() == [L + (w + 1) * (h + 1)] * 2
        assert image_after_text("rope2d", L, h, w)[2].tolist() == [L + max(h, w) + 1] * 2
        assert image_after_text("flat", L, h, w)[2].tolist() == [L + h * w + 1]


@pytest.mark.parametrize("h,w", [(2, 3), (4, 4), (1, 5), (3, 1)])
def test_intra_image_spacing(h, w):
    _, v2, _ = image_after_text("tie_v2", 7, h, w)
    _, v1, _ = image_after_text("tie_v1", 7, h, w)
    _, r2, _ = image_after_text("rope2d", 7, h, w)
    _, fl, _ = image_after_text("flat", 7, h, w)
    for grid, down, right in ((v2, [1, 0], [0, 1]), (r2, [1, 0], [0, 1]), (v1, [w + 1, 0], [0, h + 1])):
        assert (grid[1:] - grid[:-1]).reshape(-1, 2).eq(torch.tensor(down, dtype=F64)).all()
        assert (grid[:, 1:] - grid[:, :-1]).reshape(-1, 2).eq(torch.tensor(right, dtype=F64)).all()
    assert torch.equal(fl.flatten(), 8 + torch.arange(h * w, dtype=F64))  # raster order


def test_rope2d_placement():
    # SPEC §15.4: patch (i, j) (1-based) at (L+i, L+j)
    L, h, w = 4, 3, 2
    _, grid, _ = image_after_text("rope2d", L, h, w)
    for i in range(h):
        for j in range(w):
            assert grid[i, j].tolist() == [L + i + 1, L + j + 1]


def offsets(grid):
    """Offsets between every pair of patches, (P, P, A)."""
    flat = grid.reshape(-1, grid.shape[-1])
    return flat[:, None] - flat[None, :]


def test_crop_consistency():
    # S15: for an image and its top half, offsets between corresponding patches agree under v2, not v1.
    L, h, w = 3, 4, 3
    for scheme, same in (("tie_v2", True), ("tie_v1", False)):
        _, full, _ = image_after_text(scheme, L, h, w)
        _, top, _ = image_after_text(scheme, L, h // 2, w)
        assert torch.equal(offsets(full[: h // 2]), offsets(top)) is same, scheme


def test_mrope_hf_docstring_example():
    # Qwen2-VL get_rope_index docstring: a 3x2x2 video then 5 text tokens.
    pos = assign_positions([("video", 3, 2, 2), ("text", 5)], "mrope", dtype=F64)
    t, h, w = pos.T.tolist()
    assert t == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 4, 5, 6, 7]
    assert h == [0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 3, 4, 5, 6, 7]
    assert w == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 3, 4, 5, 6, 7]


def test_mrope_image_after_text():
    # SPEC §8: vision token zero-based (t, h, w) at (S+t, S+h, S+w) with S = L+1; next text L + max + 1
    pos = assign_positions([("text", 3), ("image", 2, 4), ("text", 1)], "mrope", dtype=F64)
    S = 3
    assert pos[3:11].tolist() == [[S, S + i, S + j] for i in range(2) for j in range(4)]
    assert pos[-1].tolist() == [2 + 4 + 1] * 3


def test_tie_v2_video_3d():
    # S15's video form: beta_k = L + (thw - size_k)/2 on axes (t, h, w); next text L + thw + 1; symmetric gaps
    L, t, h, w = 4, 3, 2, 5
    pos = assign_positions([("text", L + 1), ("video", t, h, w), ("text", 1)], "tie_v2", 3, F64)
    grid = pos[L + 1 : -1].view(t, h, w, 3)
    n = t * h * w
    assert grid[0, 0, 0].tolist() == [L + (n - t) / 2 + 1, L + (n - h) / 2 + 1, L + (n - w) / 2 + 1]
    assert pos[-1].tolist() == [L + n + 1] * 3
    assert torch.equal(grid[0, 0, 0] - pos[L], pos[-1] - grid[-1, -1, -1])


def test_errors():
    with pytest.raises(ValueError, match="needs 3 position axes"):
        assign_positions([("video", 2, 2, 2)], "tie_v1")
    with pytest.raises(ValueError, match="unknown position scheme"):
        assign_positions([("text", 2)], "tie_v3")
    with pytest.raises(ValueError, match="has 2 axes, not 3"):
        assign_positions([("text", 2)], "tie_v1", n_axes=3)
    with pytest.raises(ValueError, match="unknown segment kind"):
        assign_positions([("audio", 2)], "flat")
    with pytest.raises(ValueError, match="empty image"):
        assign_positions([("image", 0, 3)], "rope2d")


@pytest.mark.parametrize("name", POS.names())
def test_every_pos_module_assigns(name):
    mcfg = ModelConfig(d_model=32, n_head=2, n_layer=1, seq_len=64)
    pos = POS.get(name)(POS.get(name).Config(), mcfg)
    segs = [("text", 3), ("image", 2, 2), ("text", 2)]
    out = assign_for(pos, segs)
    assert out.shape == (9, pos.n_axes) and out.dtype == torch.float32
    expected = {"rope2d": "rope2d", "rope_tie": "tie_v1", "rope_tie_v2": "tie_v2", "mrope": "mrope"}
    assert torch.equal(out, assign_positions(segs, expected.get(name, "flat"), pos.n_axes))
    if hasattr(pos, "assign"):
        assert torch.equal(pos.assign(segs), out)
