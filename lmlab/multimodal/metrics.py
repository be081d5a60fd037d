"""Metrics of the digits lab (SPEC §15.3), all exact likelihoods in bits, on a fixed-template split.

- text bits/byte per direction: caption-byte targets only ([IMG], [/IMG], [EOS] are kept out);
  ``understand`` is the caption given the image, ``generate`` the caption prior (SPEC §15 pitfall);
- image bits/pixel: -log2 of each pixel's level probability, averaged over the 64 pixels;
  ``uncond`` from understand sequences (only [BOS] [IMG] before the image), ``cond`` from generate
  sequences (the caption before it). With p > 1 these are upper bounds relative to p = 1;
- [/IMG] bits are reported apart (fully predictable);
- caption accuracy: the 10 fixed-template captions (+ [EOS]) scored by summed log-prob after the
  image, argmax against the label (with another image's pixels it should fall to ~0.1);
- generation: ``samples_per_class`` caption-conditioned samples per digit, judged by a logistic
  regression fitted on the training images (its own accuracy on the split is the ceiling), and a
  mode-collapse check: mean pairwise L1 between same-class samples relative to real images;
- reference points: uniform log2(17) = 4.087 bpp, the per-position marginal (add-one smoothed
  counts of the training images; 2.42 bpp on the test split) and the label-conditional marginal.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lmlab.multimodal import digits
from lmlab.multimodal.digits import CAPTION, CLOSE, END, GENERATE, LEVELS, UNDERSTAND

LN2 = math.log(2)
KEYS = ("cap_nats", "cap_bytes", "img_nats", "pixels", "close_nats", "close_n", "text_nats", "text_n")


def reference_bpp(train_images, train_labels, eval_images, eval_labels) -> dict:
    """Bits/pixel of fixed per-pixel distributions fitted on the training images (add-one smoothing)."""
    tr = np.asarray(train_images).reshape(len(train_images), -1)
    ev = np.asarray(eval_images).reshape(len(eval_images), -1)
    P = tr.shape[1]

    def bpp(counts, rows):  # counts (P, 17) per row group
        prob = (counts + 1) / (counts + 1).sum(-1, keepdims=True)
        return -np.log2(prob[np.arange(P), rows]).sum()

    marg = np.stack([np.bincount(tr[:, j], minlength=LEVELS) for j in range(P)])
    total_cond = 0.0
    for y in range(10):
        sub = tr[np.asarray(train_labels) == y]
        cnt = np.stack([np.bincount(sub[:, j], minlength=LEVELS) for j in range(P)])
        total_cond += sum(bpp(cnt, r) for r in ev[np.asarray(eval_labels) == y])
    return {
        "ref_uniform_bpp": math.log2(LEVELS),
        "ref_marginal_bpp": float(sum(bpp(marg, r) for r in ev) / ev.size),
        "ref_label_marginal_bpp": float(total_cond / ev.size),
    }


def batch_sums(out: dict, batch: dict) -> dict[int, torch.Tensor]:
    """Per-direction sums of one evaluated batch: {direction: tensor of len(KEYS)} in float64."""
    role = batch["role"]
    text = out["text_nll"].double()
    img = out["img_nll"].double().flatten(1)  # (B, M·P), 0 at padding patches
    P = out["img_nll"].shape[-1]
    pix = out["patch_mask"].sum(1).double() * P  # (B,) real pixels per row
    res = {}
    for d in (UNDERSTAND, GENERATE):
        rows = batch["direction"] == d
        if not rows.any():
            continue
        r, t = role[rows], text[rows]
        res[d] = torch.stack([
            t[r == CAPTION].sum(), (r == CAPTION).sum().double(),
            img[rows].sum(), pix[rows].sum(),
            t[r == CLOSE].sum(), (r == CLOSE).sum().double(),
            t[out["text_mask"][rows]].sum(), out["text_mask"][rows].sum().double(),
        ])
    return res


def summarize(sums: dict[int, torch.Tensor], img_weight: float = 1.0) -> dict:
    """Per-direction sums -> bits metrics (names without a split prefix)."""
    s = {d: dict(zip(KEYS, v.tolist())) for d, v in sums.items()}
    m = {}
    for d, name in ((UNDERSTAND, "understand"), (GENERATE, "generate")):
        if d in s:
            m[f"text_bpb_{name}"] = s[d]["cap_nats"] / max(s[d]["cap_bytes"], 1) / LN2
            m[f"img_bpp_{'uncond' if d == UNDERSTAND else 'cond'}"] = s[d]["img_nats"] / max(s[d]["pixels"], 1) / LN2
            m[f"close_bits_{name}"] = s[d]["close_nats"] / max(s[d]["close_n"], 1) / LN2
    tot = {k: sum(v[k] for v in s.values()) for k in KEYS}
    m["bpb"] = tot["cap_nats"] / max(tot["cap_bytes"], 1) / LN2
    m["img_bpp"] = tot["img_nats"] / max(tot["pixels"], 1) / LN2
    m["loss"] = tot["text_nats"] / max(tot["text_n"], 1) + img_weight * tot["img_nats"] / max(tot["pixels"], 1)
    return m


@torch.no_grad()
def evaluate_sums(model, batches) -> dict[int, torch.Tensor]:
    """Per-direction sums over ``batches`` (add several before ``summarize`` to pool them)."""
    sums: dict[int, torch.Tensor] = {}
    for batch in batches:
        for d, v in batch_sums(model.losses(batch), batch).items():
            sums[d] = sums.get(d, 0) + v
    return sums


def evaluate(model, batches, img_weight: float = 1.0) -> dict:
    return summarize(evaluate_sums(model, batches), img_weight)


@torch.no_grad()
def caption_scores(model, images, patch: int, template: str = digits.EVAL_TEMPLATE, batch_size: int = 320):
    """(n, 10) summed nats of caption + [EOS] for each of the ten captions after each image."""
    patches = digits.patchify(np.asarray(images), patch)
    grid = (digits.SIDE // patch,) * 2
    caps = [digits.caption(template, y) for y in range(10)]
    exs = [digits.encode(caps[y], patches[i], UNDERSTAND) for i in range(len(patches)) for y in range(10)]
    scores = []
    for i in range(0, len(exs), batch_size):
        batch = digits.collate(exs[i : i + batch_size], grid)
        out = model.losses(batch)
        keep = (batch["role"] == CAPTION) | (batch["role"] == END)
        scores.append((out["text_nll"].double() * keep).sum(1))
    return torch.cat(scores).view(len(patches), 10)


def caption_accuracy(model, images, labels, patch: int, template: str = digits.EVAL_TEMPLATE) -> float:
    pred = caption_scores(model, images, patch, template).argmin(1).numpy()
    return float((pred == np.asarray(labels)).mean())


def fit_judge(train_images, train_labels):
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    X = np.asarray(train_images).reshape(len(train_images), -1) / (LEVELS - 1)
    with threadpool_limits(1):  # BLAS threads spinning against torch's cost 30x on a busy 2-core machine
        return LogisticRegression(max_iter=3000).fit(X, np.asarray(train_labels))


def judge_accuracy(judge, images, labels) -> float:
    X = np.asarray(images).reshape(len(images), -1) / (LEVELS - 1)
    return float((judge.predict(X) == np.asarray(labels)).mean())


def mean_pairwise_l1(images) -> float:
    x = torch.as_tensor(np.asarray(images), dtype=torch.float64).flatten(1)
    if len(x) < 2:
        return float("nan")
    d = torch.cdist(x, x, p=1)
    return float(d.sum() / (len(x) * (len(x) - 1)))


def diversity_ratio(samples, sample_labels, real, real_labels) -> float:
    """Mean over digits of (pairwise L1 among samples) / (pairwise L1 among real images)."""
    s_lab, r_lab = np.asarray(sample_labels), np.asarray(real_labels)
    ratios = [mean_pairwise_l1(np.asarray(samples)[s_lab == y]) / mean_pairwise_l1(np.asarray(real)[r_lab == y])
              for y in range(10)]
    ratios = [r for r in ratios if not math.isnan(r)]
    return float(np.mean(ratios)) if ratios else float("nan")  # nan with one sample per digit


@torch.no_grad()
def sample_per_class(model, n_per_class: int, seed: int = 0, template: str = digits.EVAL_TEMPLATE):
    """-> samples (10·n, 8, 8) levels and their labels, digit by digit."""
    g = torch.Generator().manual_seed(seed)
    labels = np.repeat(np.arange(10), n_per_class)
    caps = [digits.caption(template, int(y)) for y in labels]
    return model.generate_images(caps, generator=g).numpy(), labels


def save_grid(samples, labels, path, per_row: int = 10, scale: int = 4) -> None:
    """PNG grid: one row per digit, the first ``per_row`` samples of it, grey frames between cells."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.image

    labels = np.asarray(labels)
    per_row = min(per_row, max(int((labels == y).sum()) for y in range(10)))
    cell = digits.SIDE * scale + 2
    grid = np.full((10 * cell, per_row * cell), 4.0)  # light grey frames
    for y in range(10):
        for c, img in enumerate(np.asarray(samples)[labels == y][:per_row]):
            big = np.kron(img, np.ones((scale, scale)))
            grid[y * cell + 1 : y * cell + 1 + big.shape[0], c * cell + 1 : c * cell + 1 + big.shape[1]] = big
    matplotlib.image.imsave(str(path), grid, cmap="gray_r", vmin=0, vmax=LEVELS - 1)
