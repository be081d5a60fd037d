"""``data=digits``: scikit-learn's bundled 8×8 handwritten digits as image-text sequences (SPEC §15.3).

This source feeds the ``image_text`` task (``task=image_text``, ``lmlab.tasks.image_text``), not the
text pipeline: the sequences, vocabulary (260 byte-level ids, the ``tokenizer`` group is not used),
heads and metrics live in ``lmlab.multimodal``. The keys of this group say what the data is (patch
size, templates, splits); how it is learned (image head, loss weights, early stopping) is the task's.

Start-up checks (each names the key to change): a patch size that does not divide the 8×8 image; a
template that is not ``{word}``/``{numeral}`` text; a caption (under any template, any digit) whose
sequence is longer than ``model.seq_len``; a position scheme that cannot place the image (e.g. an axis
count its assigner does not support); a learned position table shorter than the largest position
the assigner gives; a ``data.subgrid_holdout`` that is not a list of ``HxW`` sub-grids (2 .. 8/p a
side) leaving some size to train on, or one whose held-out sizes reach a learned position no training
size reaches (an untrained table entry). (Attention/position incompatibilities, e.g. RoPE with ``attention=vq``, are the
attention's own checks.) Inherited keys ``val_fraction``, ``min_chars`` and ``strict_utf8`` do not
apply; ``val_seed`` fixes the split permutation and ``max_docs`` caps the training images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from lmlab.data.sources.base import DataConfig, DataSource
from lmlab.registry import DATA

N_IMAGES = 1797


@dataclass
class DigitsConfig(DataConfig):
    name: str = "digits"
    batch_size: int = 32
    num_workers: int = 0  # sequences are built in the trainer process (microseconds each)
    patch: int = 2  # p: p×p patches, M = (8/p)² per image
    n_test: int = 360
    n_val: int = 144  # carved from the 1437 training images; early stopping / best checkpoint
    understand_frac: float = 0.5  # share of training sequences with the caption after the image
    train_templates: list[str] = field(default_factory=lambda: [
        "this is a {word}.", "a handwritten {word}.", "the digit {numeral}.", "a picture of {word}."])
    eval_template: str = "this is a {word}."
    # SPEC §15.4's held-out sub-grid probe: null = whole images; a list of "HxW" sizes = train on random
    # h×w crops (2 <= h, w <= 8/p) of every other size, validate on those, test on exactly these
    subgrid_holdout: Optional[list[str]] = None

    uses_val_fraction = False  # the split is fixed by n_test/n_val

    def check(self, run) -> list[str]:
        p = super().check(run)
        from lmlab.multimodal import digits

        if self.patch <= 0 or digits.SIDE % self.patch:
            p.append(
                f"data.patch={self.patch} does not divide the {digits.SIDE}×{digits.SIDE} digits image"
                " (choose 1, 2, 4 or 8)"
            )
        if not 0.0 <= self.understand_frac <= 1.0:
            p.append(f"data.understand_frac={self.understand_frac} must be in [0, 1]")
        if self.n_test < 1 or self.n_val < 1 or self.n_test + self.n_val >= N_IMAGES:
            p.append(f"data.n_test={self.n_test} + data.n_val={self.n_val} must leave training images"
                     f" out of {N_IMAGES} (each >= 1)")
        if not self.train_templates:
            p.append("data.train_templates is empty")
        templates = {f"data.train_templates[{i}]": t for i, t in enumerate(self.train_templates)}
        templates["data.eval_template"] = self.eval_template
        bad = False
        for key, t in templates.items():
            try:
                digits.caption(t, 7)
            except (KeyError, IndexError, ValueError) as e:
                p.append(f"{key}={t!r} is not a caption template: only {{word}} and {{numeral}} may be"
                         f" filled ({type(e).__name__}: {e})")
                bad = True
        if bad or self.patch <= 0 or digits.SIDE % self.patch:
            return p
        for key, t in templates.items():
            need = digits.max_layout_len(self.patch, [t])
            if need > run.model.seq_len:
                longest = max(len(digits.caption(t, y)) for y in range(10))
                p.append(
                    f"{key}={t!r} makes captions of up to {longest} bytes; with {(digits.SIDE // self.patch) ** 2}"
                    f" patches and 4 special tokens the sequence has {need} slots > model.seq_len="
                    f"{run.model.seq_len} (raise model.seq_len or shorten the caption)"
                )
        sub = self._subgrid_problems()
        p += sub
        if not sub:
            p += self._position_problems(run, templates.values())
        return p

    def subgrids(self) -> tuple[list, list] | None:
        """(training sizes, held-out sizes) of the sub-grid probe, None when it is off."""
        from lmlab.multimodal import digits

        if self.subgrid_holdout is None:
            return None
        return digits.subgrid_sizes(self.patch, self.subgrid_holdout)

    def _subgrid_problems(self) -> list[str]:
        from lmlab.multimodal import digits

        if self.subgrid_holdout is None or self.patch <= 0 or digits.SIDE % self.patch:
            return []
        G = digits.SIDE // self.patch
        key = f"data.subgrid_holdout={list(self.subgrid_holdout)}"
        if not self.subgrid_holdout:
            return [f"{key} holds out nothing: list sizes such as ['3x3'] (or null for whole images)"]
        try:
            train, held = self.subgrids()
        except ValueError as e:
            return [f"{key}: {e}"]
        every = [(h, w) for h in range(2, G + 1) for w in range(2, G + 1)]
        bad = [f"{h}x{w}" for h, w in held if (h, w) not in every]
        if bad:
            return [f"{key}: {', '.join(bad)} is not a sub-grid of the {G}x{G}-patch image at data.patch="
                    f"{self.patch} (sizes run 2x2 .. {G}x{G})"]
        if len(set(held)) != len(held):
            return [f"{key} lists a size twice"]
        if not train:
            return [f"{key} holds out every size from 2x2 to {G}x{G}: nothing is left to train on"]
        return []

    def _layouts(self, templates, grids) -> list:
        from lmlab.multimodal import digits

        cap_len = max(len(digits.caption(t, y)) for t in templates for y in range(10))
        return [digits.Layout(d, cap_len, g) for g in grids for d in (digits.UNDERSTAND, digits.GENERATE)]

    def _position_problems(self, run, templates) -> list[str]:
        """Lay out the longest sequences with the configured pos module's own assigner."""
        from lmlab.model.pos.assign import assign_for
        from lmlab.multimodal import digits
        from lmlab.registry import POS

        if run.pos is None or run.pos.name not in POS:
            return []
        try:
            pos = POS.get(run.pos.name)(run.pos, run.model)
        except Exception:  # noqa: BLE001 - the pos config's own check reports why it cannot be built
            return []
        templates = list(templates)
        grid = (digits.SIDE // self.patch,) * 2
        sub = self.subgrids()
        grids = [grid] + (sub[0] + sub[1] if sub else [])
        top = 0.0
        for lay in self._layouts(templates, grids):
            try:
                top = max(top, float(assign_for(pos, lay.segments()).max()))
            except ValueError as e:
                h, w = lay.grid
                return [f"pos.name={run.pos.name} cannot place the {h}×{w}-patch digits image: {e}"]
        table = getattr(pos, "max_len", None)
        if table is not None and top + 1 > table:
            return [
                f"pos.name={run.pos.name}: the digits sequences reach position {int(top)}, beyond the learned"
                f" table of {table} (set pos.max_len >= {int(top) + 1} or raise model.seq_len)"
            ]
        if table is not None and sub:
            # a learned table has no trained entry for a position only the held-out sizes reach
            seen = max(float(assign_for(pos, lay.segments()).max())
                       for lay in self._layouts(self.train_templates, sub[0]))
            held = max(float(assign_for(pos, lay.segments()).max())
                       for lay in self._layouts([self.eval_template], sub[1]))
            if held > seen:
                return [
                    f"pos.name={run.pos.name} cannot take the sub-grid probe data.subgrid_holdout="
                    f"{list(self.subgrid_holdout)}: the held-out sizes reach learned position {int(held)}, never"
                    f" trained (training sizes reach {int(seen)}); hold out smaller sizes or use a rotary pos"
                ]
        return []


@DATA.register("digits")
class Digits(DataSource):
    Config = DigitsConfig
    task = "image_text"

    def load(self, cache_dir: str):
        """The splits as {"train"|"val"|"test": (images (n, 8, 8), labels (n,))}; no text column."""
        from lmlab.multimodal.digits import load_split

        c = self.cfg
        return load_split(c.val_seed, c.n_test, c.n_val, c.max_docs)
