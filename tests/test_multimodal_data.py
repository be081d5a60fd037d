"""Digits data (SPEC §15.3): lossless patches, splits, sequence layout and masks, reproducible stream."""

import math

import numpy as np
import pytest
import torch

from lmlab.multimodal import digits, metrics
from lmlab.multimodal.digits import CAPTION, CLOSE, END, GENERATE, OPEN, PATCH, UNDERSTAND


@pytest.mark.parametrize("p", [1, 2, 4, 8])
def test_patchify_then_unpatchify_is_identity(p):
    images, _ = digits.load_split()["test"]
    x = images[:7]
    pat = digits.patchify(x, p)
    assert pat.shape == (7, (8 // p) ** 2, p * p)
    np.testing.assert_array_equal(digits.unpatchify(pat, p), x)
    t = torch.from_numpy(x)
    assert torch.equal(digits.unpatchify(digits.patchify(t, p), p), t)
    # raster order: patch (row i, col j) holds image[i*p:(i+1)*p, j*p:(j+1)*p]
    w = 8 // p
    for m in sorted({0, min(w + 1, w * w - 1), w * w - 1}):
        i, j = divmod(m, w)
        np.testing.assert_array_equal(pat[3, m], x[3, i * p : (i + 1) * p, j * p : (j + 1) * p].ravel())


def test_input_map_is_lossless():
    v = torch.arange(17)
    x = digits.to_input(v.double())
    assert x[0] == -1 and x[-1] == 1 and (x.diff() > 0).all()
    assert torch.equal(digits.from_input(x).round().long(), v)
    assert (digits.from_input(x) - v).abs().max() < 1e-12


def test_split_sizes_disjoint_and_reference_points():
    s = digits.load_split()
    sizes = {k: len(v[1]) for k, v in s.items()}
    assert sizes == {"train": 1293, "val": 144, "test": 360}
    all_imgs = np.concatenate([s[k][0].reshape(-1, 64) for k in s])
    assert len(np.unique(all_imgs, axis=0)) == len(np.unique(digits._load()[0].reshape(-1, 64), axis=0))
    # SPEC §15.3 reference points, measured with the 1437-image training split: uniform 4.087, marginal 2.424
    tr_x = np.concatenate([s["train"][0], s["val"][0]])
    tr_y = np.concatenate([s["train"][1], s["val"][1]])
    ref = metrics.reference_bpp(tr_x, tr_y, *s["test"])
    assert ref["ref_uniform_bpp"] == pytest.approx(math.log2(17))
    assert ref["ref_marginal_bpp"] == pytest.approx(2.424, abs=2e-3)
    assert ref["ref_label_marginal_bpp"] == pytest.approx(2.197, abs=2e-3)


@pytest.mark.parametrize("direction", [UNDERSTAND, GENERATE])
def test_sequence_layout_targets_and_masks(direction):
    images, labels = digits.load_split()["val"]
    patches = digits.patchify(images[0], 2)
    cap = digits.caption("the digit {numeral}.", int(labels[0]))
    e = digits.encode(cap, patches, direction)
    tok, role, tgt, img = e["tokens"], e["role"], e["text_target"], e["is_image"]
    assert len(tok) == digits.Layout(direction, len(cap), (4, 4)).n_slots
    assert tok[0] == digits.BOS and tok[-1] == digits.EOS
    assert img.sum() == 16 and (role == PATCH).sum() == 16
    first = int(np.argmax(img))
    assert tok[first - 1] == digits.IMG and tok[first + 16] == digits.IMG_END
    # slot t is a PATCH target exactly when slot t+1 is an image slot
    np.testing.assert_array_equal(role[:-1] == PATCH, img[1:])
    # text targets: the next token wherever the next slot is text, nothing elsewhere
    txt = (role != PATCH) & (role != 0)
    np.testing.assert_array_equal(tgt[txt], tok[1:][txt[:-1]])
    assert (tgt[~txt] == -100).all()
    assert bytes(tgt[role == CAPTION].tolist()) == cap
    assert (role == CLOSE).sum() == 1 and (role == END).sum() == 1 and (role == OPEN).sum() == 1


def test_train_stream_is_a_function_of_the_example_index():
    images, labels = digits.load_split()["train"]
    a = digits.TrainStream(images, labels, 2, 8, seed=3, templates=digits.TRAIN_TEMPLATES)
    it = iter(a)
    batches = [next(it) for _ in range(4)]
    resumed = next(iter(digits.TrainStream(images, labels, 2, 8, seed=3, templates=digits.TRAIN_TEMPLATES,
                                           start_batch=3)))
    for k in ("tokens", "patches", "role", "is_image"):
        assert torch.equal(batches[3][k], resumed[k])
    other = next(iter(digits.TrainStream(images, labels, 2, 8, seed=4, templates=digits.TRAIN_TEMPLATES)))
    assert not torch.equal(other["patches"], batches[0]["patches"])
    # both directions and every template occur; the mix is near 50/50
    exs = [a.example(k) for k in range(600)]
    frac = np.mean([e["direction"] == UNDERSTAND for e in exs])
    assert 0.43 < frac < 0.57
    caps = {bytes(e["text_target"][e["role"] == CAPTION].tolist()) for e in exs}
    for t in digits.TRAIN_TEMPLATES:
        assert any(digits.caption(t, y) in caps for y in range(10))
    # one epoch visits every training image exactly once
    n = len(labels)
    seen = [a.example(k)["patches"].tobytes() for k in range(n)]
    assert len(set(seen)) == len({p.tobytes() for p in digits.patchify(images, 2)})


def test_collate_pads_without_targets():
    images, labels = digits.load_split()["val"]
    batches = digits.eval_batches(images[:6], labels[:6], 2, 6, directions=(UNDERSTAND, GENERATE))
    for b in batches:
        for r, lay in enumerate(b["layouts"]):
            n = lay.n_slots
            assert (b["role"][r, n:] == 0).all() and (b["text_target"][r, n:] == -100).all()
            assert not b["is_image"][r, n:].any()


def test_subgrid_training_stream_never_shows_a_held_out_size():
    """SPEC §15.4 probe: training crops come only from the training sizes (all of them occur), each
    crop is the image's own patches at its offset, and rows of one batch keep their own grids."""
    images, labels = digits.load_split()["train"]
    train, held = digits.subgrid_sizes(2, ["3x3", "4x4"])
    assert held == [(3, 3), (4, 4)] and (3, 3) not in train and (4, 4) not in train and len(train) == 7
    s = digits.TrainStream(images, labels, 2, 16, seed=1, templates=digits.TRAIN_TEMPLATES, subgrids=train)
    it = iter(s)
    grids = []
    full = digits.patchify(images, 2).reshape(len(labels), 4, 4, 4)
    for _ in range(40):
        b = next(it)
        for r, lay in enumerate(b["layouts"]):
            g = tuple(lay.grid)
            grids.append(g)
            M = g[0] * g[1]
            assert int(b["patch_mask"][r].sum()) == M == int(b["is_image"][r].sum())
            assert not b["patches"][r, M:].any()
            crop = b["patches"][r, :M].view(g[0], g[1], 4).numpy()
            img = full[int(b["index"][r])]
            assert any((img[t : t + g[0], c : c + g[1]] == crop).all()
                       for t in range(5 - g[0]) for c in range(5 - g[1]))
    assert set(grids) == set(train)  # every training size occurs, no held-out one
    # the full-image stream is unchanged by the option being off
    a = next(iter(digits.TrainStream(images, labels, 2, 8, seed=3, templates=digits.TRAIN_TEMPLATES)))
    assert all(tuple(lay.grid) == (4, 4) for lay in a["layouts"]) and a["patch_mask"].all()


def test_held_out_evaluation_covers_exactly_the_held_out_sizes_at_every_offset():
    images, labels = digits.load_split()["test"]
    n = 7
    held = [(3, 3), (4, 4)]
    batches = digits.subgrid_eval_batches(images[:n], labels[:n], 2, 16, held)
    grids = [tuple(lay.grid) for b in batches for lay in b["layouts"]]
    per_image = 4 + 1  # a 3x3 crop fits at 2x2 offsets, a 4x4 at one
    assert len(grids) == 2 * n * per_image  # both directions
    assert set(grids) == set(held) and grids.count((3, 3)) == 2 * n * 4
    # every 3x3 crop of image 0 appears once per direction
    und = [b for b in batches if (b["direction"] == UNDERSTAND).all()]
    crops = {b["patches"][r, :9].numpy().tobytes() for b in und for r in range(len(b["layouts"]))
             if tuple(b["layouts"][r].grid) == (3, 3)}
    img0 = digits.patchify(images[:1], 2).reshape(4, 4, 4)
    for t in range(2):
        for c in range(2):
            assert np.ascontiguousarray(img0[t : t + 3, c : c + 3]).reshape(9, 4).tobytes() in crops
    # one crop per image (validation): sizes cycle through the list, deterministic
    one = digits.subgrid_eval_batches(images[:n], labels[:n], 2, 16, [(2, 2), (2, 3)], every_offset=False)
    g1 = [tuple(lay.grid) for b in one for lay in b["layouts"]]
    assert g1[:n] == [(2, 2), (2, 3)] * 3 + [(2, 2)] and len(g1) == 2 * n
    again = digits.subgrid_eval_batches(images[:n], labels[:n], 2, 16, [(2, 2), (2, 3)], every_offset=False)
    assert all(torch.equal(x["patches"], y["patches"]) for x, y in zip(one, again))
