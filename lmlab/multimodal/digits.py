"""Digits image-text sequences (SPEC §15.3): scikit-learn's bundled 8×8 digits as captions + continuous patches.

Design choices and guarantees:
- Data: ``sklearn.datasets.load_digits()`` (bundled with scikit-learn, no download): 1797 images, integer
  intensities 0..16 (17 levels). Split: ``np.random.default_rng(split_seed).permutation(1797)``; the first
  ``n_test`` (360) are the test split, the rest (1437) the training split, of which the first ``n_val``
  (144) are carved out for validation (early stopping) and the remaining 1293 are trained on.
- Vocabulary (260): bytes 0..255, then [BOS] [EOS] [IMG] [/IMG]. Captions are UTF-8 bytes of a template
  filled with the digit's word ("seven") or numeral ("7").
- Two directions, mixed 50/50 in training:
  understand ``[BOS] [IMG] P1..PM [/IMG] caption [EOS]``; generate ``[BOS] caption [IMG] P1..PM [/IMG] [EOS]``.
- Patches: p ∈ {1, 2, 4}; M = (8/p)² patches in raster order, pixels raster order inside a patch.
  The model input is 2v/16 - 1 ∈ [-1, 1]^{p²}: continuous and invertible (``to_input``/``from_input``),
  so the input is lossless; patchify/unpatchify are exact inverses (tests).
- Targets: slot t predicts slot t+1. ``role[t]`` says what that next slot is (caption byte, [IMG],
  [/IMG], [EOS] or an image patch), so losses and metrics mask per modality (SPEC §15 pitfalls):
  text CE only where the next slot is text, image NLL only where it is a patch; [/IMG] is reported
  apart and kept out of caption bits/byte.
- Held-out sub-grid probe (SPEC §15.4, ``data.subgrid_holdout``): training examples are random
  h×w crops of the patch grid (h, w from 2 to 8/p, the held-out sizes never drawn), validation is one
  such crop per image, and ``subgrid_eval_batches`` measures exactly the held-out sizes, every crop
  position once. Crops keep their own grid in the ``Layout``, so every position scheme places them
  as the h×w image they are.
- Training draws (template, direction) per example from ``default_rng([seed, epoch, index])``; the
  order of examples in an epoch from ``default_rng([seed, epoch])``. Both depend only on the global
  example index, so a resumed run (``start`` = batches consumed × batch size) sees the same stream;
  batches are sharded over DataLoader workers and DDP ranks (each example once per epoch, any
  ``data.num_workers``; ``batch["index"]`` names the training images of a batch).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

BOS, EOS, IMG, IMG_END = 256, 257, 258, 259
VOCAB_SIZE = 260
LEVELS = 17
SIDE = 8  # digits are SIDE × SIDE
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TRAIN_TEMPLATES = ("this is a {word}.", "a handwritten {word}.", "the digit {numeral}.", "a picture of {word}.")
EVAL_TEMPLATE = "this is a {word}."

UNDERSTAND, GENERATE = 0, 1
DIRECTIONS = ("understand", "generate")
# role of the *target* slot (what slot t+1 holds)
NONE, CAPTION, OPEN, CLOSE, END, PATCH = 0, 1, 2, 3, 4, 5


@lru_cache(maxsize=1)
def _load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images.astype(np.int64), d.target.astype(np.int64)


def load_split(split_seed: int = 0, n_test: int = 360, n_val: int = 144, max_train: int = 0) -> dict:
    """{"train"|"val"|"test": (images (n, 8, 8) int64 levels, labels (n,) int64)}."""
    images, labels = _load()
    perm = np.random.default_rng(split_seed).permutation(len(images))
    test, val, train = perm[:n_test], perm[n_test : n_test + n_val], perm[n_test + n_val :]
    if max_train:
        train = train[:max_train]
    return {k: (images[idx], labels[idx]) for k, idx in (("train", train), ("val", val), ("test", test))}


# ------------------------------------------------------------------------------------------------
# Patches and the lossless input map
# ------------------------------------------------------------------------------------------------


def patchify(images, p: int):
    """(..., H, W) -> (..., (H/p)(W/p), p²): patches in raster order, pixels raster order inside."""
    *lead, H, W = images.shape
    if H % p or W % p:
        raise ValueError(f"patch size {p} does not divide the {H}×{W} image")
    x = images.reshape(*lead, H // p, p, W // p, p)  # (..., h, p, w, p)
    n = len(lead)
    x = x.transpose(*range(n), n, n + 2, n + 1, n + 3) if isinstance(x, np.ndarray) else x.permute(
        *range(n), n, n + 2, n + 1, n + 3)  # (..., h, w, p, p)
    return x.reshape(*lead, (H // p) * (W // p), p * p)


def unpatchify(patches, p: int, H: int = SIDE, W: int = SIDE):
    """(..., M, p²) -> (..., H, W); the inverse of ``patchify``."""
    *lead, M, P = patches.shape
    x = patches.reshape(*lead, H // p, W // p, p, p)  # (..., h, w, p, p)
    n = len(lead)
    x = x.transpose(*range(n), n, n + 2, n + 1, n + 3) if isinstance(x, np.ndarray) else x.permute(
        *range(n), n, n + 2, n + 1, n + 3)  # (..., h, p, w, p)
    return x.reshape(*lead, H, W)


def to_input(levels):
    """Intensity levels 0..16 -> continuous model inputs 2v/16 - 1 in [-1, 1] (invertible)."""
    return levels * (2.0 / (LEVELS - 1)) - 1.0


def from_input(x):
    return (x + 1.0) * ((LEVELS - 1) / 2.0)


# ------------------------------------------------------------------------------------------------
# Captions and sequence layout
# ------------------------------------------------------------------------------------------------


def caption(template: str, label: int) -> bytes:
    return template.format(word=WORDS[label], numeral=str(label)).encode("utf-8")


class Layout(NamedTuple):
    """What fixes the slot structure (and so the positions) of one sequence (a tuple: Lightning moves
    batches with it untouched)."""

    direction: int
    cap_len: int
    grid: tuple[int, int]  # (h, w) patches

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def segments(self) -> list[tuple]:
        h, w = self.grid
        if self.direction == UNDERSTAND:  # [BOS] [IMG] | image | [/IMG] caption [EOS]
            return [("text", 2), ("image", h, w), ("text", self.cap_len + 2)]
        return [("text", self.cap_len + 2), ("image", h, w), ("text", 2)]  # [BOS] caption [IMG] | image | [/IMG] [EOS]

    @property
    def n_slots(self) -> int:
        return self.n_patches + self.cap_len + 4


def encode(cap: bytes, patches: np.ndarray, direction: int, grid: tuple[int, int] | None = None) -> dict:
    """One sequence as arrays: tokens (T,), is_image (T,), text_target (T,), role (T,), patches (M, P).
    ``grid`` (h, w) with h·w = M is the patch grid (a sub-grid crop); None: the batch's grid."""
    M = len(patches)
    if direction == UNDERSTAND:
        toks = [BOS, IMG] + [IMG] * M + [IMG_END] + list(cap) + [EOS]
        img_start = 2
    else:
        toks = [BOS] + list(cap) + [IMG] + [IMG] * M + [IMG_END, EOS]
        img_start = len(cap) + 2
    T = len(toks)
    tokens = np.asarray(toks, dtype=np.int64)  # image slots hold a placeholder, replaced by the embedding
    is_image = np.zeros(T, dtype=bool)
    is_image[img_start : img_start + M] = True
    role = np.full(T, NONE, dtype=np.int64)
    nxt = tokens[1:]
    role[:-1] = np.select(
        [is_image[1:], nxt == IMG, nxt == IMG_END, nxt == EOS], [PATCH, OPEN, CLOSE, END], CAPTION
    )
    text_target = np.full(T, -100, dtype=np.int64)
    txt = (role != NONE) & (role != PATCH)
    text_target[:-1][txt[:-1]] = nxt[txt[:-1]]
    return {"tokens": tokens, "is_image": is_image, "role": role, "text_target": text_target,
            "patches": patches.astype(np.int64), "direction": direction, "cap_len": len(cap), "grid": grid}


def collate(examples: list[dict], grid: tuple[int, int] | None = None) -> dict:
    """Right-pad to the longest sequence; padding is never a target (causal, so it changes nothing before it).
    Each example's grid is its own (``encode(grid=...)``) or else ``grid``; patches are right-padded to
    the largest grid of the batch and ``patch_mask`` (B, M) marks the real ones."""
    T = max(len(e["tokens"]) for e in examples)
    B = len(examples)
    out = {
        "tokens": torch.full((B, T), EOS, dtype=torch.long),
        "is_image": torch.zeros(B, T, dtype=torch.bool),
        "role": torch.zeros(B, T, dtype=torch.long),
        "text_target": torch.full((B, T), -100, dtype=torch.long),
    }
    for b, e in enumerate(examples):
        n = len(e["tokens"])
        for k in ("tokens", "is_image", "role", "text_target"):
            out[k][b, :n] = torch.from_numpy(e[k])
    grids = [tuple(e.get("grid") or grid) for e in examples]
    M = max(len(e["patches"]) for e in examples)
    P = examples[0]["patches"].shape[1]
    patches = np.zeros((B, M, P), dtype=np.int64)
    mask = np.zeros((B, M), dtype=bool)
    for b, e in enumerate(examples):
        patches[b, : len(e["patches"])] = e["patches"]
        mask[b, : len(e["patches"])] = True
    out["patches"] = torch.from_numpy(patches)  # (B, M, P)
    out["patch_mask"] = torch.from_numpy(mask)
    out["layouts"] = [Layout(e["direction"], e["cap_len"], g) for e, g in zip(examples, grids)]
    out["direction"] = torch.tensor([e["direction"] for e in examples])
    return out


class TrainStream(torch.utils.data.IterableDataset):
    """Endless training batches; example k of the stream is a pure function of (seed, k)."""

    def __init__(self, images, labels, patch: int, batch_size: int, seed: int, templates,
                 understand_frac: float = 0.5, start_batch: int = 0, subgrids=None):
        self.patches = patchify(images, patch)  # (n, M, P)
        self.labels = labels
        self.grid = (SIDE // patch, SIDE // patch)
        # sub-grid probe: each example is a random crop of one of these (h, w) sizes (None: full images)
        self.subgrids = [tuple(g) for g in subgrids] if subgrids else None
        self.batch_size, self.seed, self.templates = batch_size, seed, list(templates)
        self.understand_frac = understand_frac
        self.start_batch = start_batch

    def example(self, k: int) -> dict:
        epoch = k // len(self.labels)
        idx = self.example_index(k)
        rng = np.random.default_rng([self.seed, epoch, idx])
        template = self.templates[rng.integers(len(self.templates))]
        direction = UNDERSTAND if rng.random() < self.understand_frac else GENERATE
        patches, grid = self.patches[idx], self.grid
        if self.subgrids:  # drawn after the full-image draws, so a full-image stream is unchanged
            grid = self.subgrids[rng.integers(len(self.subgrids))]
            top, left = rng.integers(self.grid[0] - grid[0] + 1), rng.integers(self.grid[1] - grid[1] + 1)
            patches = crop(patches, self.grid, grid, (int(top), int(left)))
        ex = encode(caption(template, int(self.labels[idx])), patches, direction, grid)
        return ex | {"epoch": epoch, "index": idx}

    def example_index(self, k: int) -> int:
        """The training image that example k of the stream shows (the epoch's permutation is cached)."""
        n = len(self.labels)
        epoch, j = divmod(k, n)
        if getattr(self, "_perm_epoch", None) != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            self._perm_epoch = epoch
        return int(self._perm[j])

    def __iter__(self):
        """Batches start_batch, start_batch+1, ... of this rank, split over the DataLoader's workers:
        worker w of W yields batches start_batch + w, + w + W, ...; the loader takes one batch from each
        worker in turn, so the sequence is the same for any W and no example is yielded twice. Under DDP
        rank r of R takes global batches i·R + r (its i-th batch), so ranks never overlap either."""
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        rank, world = _rank()
        i = self.start_batch + wid
        while True:
            b = i * world + rank
            k0 = b * self.batch_size
            exs = [self.example(k) for k in range(k0, k0 + self.batch_size)]
            batch = collate(exs, self.grid)
            batch["epoch"] = exs[-1]["epoch"]
            batch["index"] = torch.tensor([e["index"] for e in exs])
            yield batch
            i += nw


def _rank() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def eval_batches(images, labels, patch: int, batch_size: int, template: str = EVAL_TEMPLATE,
                 directions=(UNDERSTAND, GENERATE)) -> list[dict]:
    """Deterministic evaluation batches: every image once per direction, fixed template."""
    grid = (SIDE // patch, SIDE // patch)
    patches = patchify(images, patch)
    out = []
    for d in directions:
        exs = [encode(caption(template, int(y)), patches[i], d) for i, y in enumerate(labels)]
        out += [collate(exs[i : i + batch_size], grid) for i in range(0, len(exs), batch_size)]
    return out


# ------------------------------------------------------------------------------------------------
# The held-out sub-grid probe (SPEC §15.4)
# ------------------------------------------------------------------------------------------------


def parse_grid(text: str) -> tuple[int, int]:
    """"HxW" -> (h, w) patches; ValueError otherwise."""
    h, sep, w = str(text).lower().partition("x")
    if not sep or not h.strip().isdigit() or not w.strip().isdigit():
        raise ValueError(f"{text!r} is not a sub-grid size HxW (e.g. 3x3)")
    return int(h), int(w)


def subgrid_sizes(patch: int, heldout, min_side: int = 2) -> tuple[list, list]:
    """(training sizes, held-out sizes) of the probe: every h×w with min_side <= h, w <= 8/p in
    raster order, the held-out ones (``"HxW"`` strings) removed from training."""
    G = SIDE // patch
    held = [parse_grid(g) for g in heldout]
    every = [(h, w) for h in range(min_side, G + 1) for w in range(min_side, G + 1)]
    return [g for g in every if g not in held], held


def crop(patches: np.ndarray, grid: tuple[int, int], size: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    """(M, P) patches of a ``grid`` image -> the (h·w, P) patches of the h×w sub-grid whose top-left
    patch is ``at`` (row, column), raster order."""
    x = patches.reshape(grid[0], grid[1], -1)[at[0] : at[0] + size[0], at[1] : at[1] + size[1]]
    return np.ascontiguousarray(x.reshape(size[0] * size[1], -1))


def subgrid_eval_batches(images, labels, patch: int, batch_size: int, sizes, template: str = EVAL_TEMPLATE,
                         every_offset: bool = True, seed: int = 0,
                         directions=(UNDERSTAND, GENERATE)) -> list[dict]:
    """Deterministic evaluation batches of sub-grid crops, both directions, fixed template.

    ``every_offset``: every image × every size in ``sizes`` × every position of the crop (the held-out
    figure: exactly those sizes, each crop once). Otherwise one crop per image, its size
    ``sizes[i % len(sizes)]`` and position drawn from ``default_rng([seed, i])`` (validation and the
    seen-size test figure: the cost of a full-image evaluation)."""
    G = (SIDE // patch, SIDE // patch)
    allp = patchify(images, patch)
    crops = []  # (image index, size, offset)
    for i in range(len(labels)):
        if every_offset:
            crops += [(i, s, (t, c)) for s in sizes for t in range(G[0] - s[0] + 1) for c in range(G[1] - s[1] + 1)]
        else:
            s = tuple(sizes[i % len(sizes)])
            rng = np.random.default_rng([seed, i])
            crops.append((i, s, (int(rng.integers(G[0] - s[0] + 1)), int(rng.integers(G[1] - s[1] + 1)))))
    out = []
    for d in directions:
        exs = [encode(caption(template, int(labels[i])), crop(allp[i], G, s, at), d, s) for i, s, at in crops]
        out += [collate(exs[i : i + batch_size]) for i in range(0, len(exs), batch_size)]
    return out


def max_layout_len(patch: int, templates) -> int:
    """Slots of the longest sequence any template makes (captions of all ten digits)."""
    longest = max(len(caption(t, y)) for t in templates for y in range(10))
    return (SIDE // patch) ** 2 + longest + 4
