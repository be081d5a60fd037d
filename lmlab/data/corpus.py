"""From a RunConfig to documents, a fixed train/validation split, and a trained tokenizer.

The validation split is a seeded choice of whole documents (``data.val_seed``, not the run seed),
so runs with different seeds, tokenizers or models are scored on the same text.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.sources.base import DataError, ReadReport
from lmlab.registry import DATA, TOKENIZER


def cache_dir(run) -> str:
    d = run.cache_dir or os.environ.get("LMLAB_CACHE") or str(Path.home() / ".cache" / "lmlab")
    Path(d).mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class Corpus:
    train: object  # datasets.Dataset with a 'text' column
    val: object
    report: ReadReport


def load_corpus(run) -> Corpus:
    import datasets

    datasets.disable_progress_bars()
    source = DATA.get(run.data.name)(run.data)
    ds = source.load(cache_dir(run))
    n = len(ds)
    if n < 2:
        raise DataError(f"data.name={run.data.name}: need at least 2 documents for a train/val split, got {n}")
    n_val = max(1, round(n * run.data.val_fraction))
    split = ds.train_test_split(test_size=n_val, seed=run.data.val_seed, shuffle=True)
    return Corpus(train=split["train"], val=split["test"], report=source.report)


class TrainTexts:
    """``train_texts`` for ``Tokenizer.build``: calling it streams the training split's texts
    (Arrow batches, never the whole column as Python strings); ``fingerprint`` is the split's HF
    dataset fingerprint, so a tokenizer cache can be keyed on it without reading any text."""

    def __init__(self, ds, batch_size: int = 1000):
        self.ds, self.batch_size = ds, batch_size
        self.fingerprint = getattr(ds, "_fingerprint", None)

    def __call__(self):
        return self  # re-iterable, as Tokenizer.build expects

    def __iter__(self):
        for batch in self.ds.select_columns(["text"]).iter(batch_size=self.batch_size):
            yield from batch["text"]


def build_tokenizer(run, corpus: Corpus | None = None):
    """Train (or load from the cache) the configured tokenizer on the training split."""
    corpus = corpus or load_corpus(run)
    cls = TOKENIZER.get(run.tokenizer.name)
    return cls.build(run.tokenizer, TrainTexts(corpus.train), cache_dir(run))
