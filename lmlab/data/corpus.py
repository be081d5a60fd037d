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
    train: object  # datasets.Dataset with a 'text' column (streaming: an IterableDataset)
    val: object  # streaming: the held-out IterableDataset until the DataModule keeps what it scored
    report: ReadReport
    streaming: bool = False
    fingerprint: str | None = None  # streaming: identity of the data (a Dataset has its own)


def load_corpus(run) -> Corpus:
    import datasets

    datasets.disable_progress_bars()
    source = DATA.get(run.data.name)(run.data)
    if getattr(run.data, "streaming", False):
        train, val, fp = source.load_streaming(cache_dir(run))
        return Corpus(train=train, val=val, report=source.report, streaming=True, fingerprint=fp)
    ds = source.load(cache_dir(run))
    n = len(ds)
    if n < 2:
        hint = ("; one file is one document: data.split=paragraph makes each paragraph one"
                if getattr(run.data, "split", None) == "file" else "")
        raise DataError(f"data.name={run.data.name}: need at least 2 documents for a train/val split, got {n}{hint}")
    n_val = max(1, round(n * run.data.val_fraction))
    train, val = split_documents(ds, n_val, run.data.val_seed)
    return Corpus(train=train, val=val, report=source.report)


def split_documents(ds, n_val: int, seed: int):
    """(train, val): the split ``ds.train_test_split(test_size=n_val, seed=seed, shuffle=True)`` makes
    -- the same permutation, so the same documents in the same order (a test holds it to HF's) --
    with the index lists in memory. Not ``train_test_split`` itself: on a memory-mapped dataset
    it names index files beside the dataset's own, which ``keep_in_memory=True`` then refuses
    (datasets 5.2), and a user's ``save_to_disk`` directory is not written to."""
    import hashlib

    import datasets
    import numpy as np
    import pyarrow as pa
    from datasets.table import InMemoryTable

    perm = np.random.default_rng(seed).permutation(len(ds))

    def part(idx, name):
        fp = hashlib.sha256(f"{ds._fingerprint}/{name}/{seed}/{n_val}".encode()).hexdigest()[:16]
        # the indices table built from the array, as Dataset.select builds it -- but select first
        # turns the indices into a Python list (~60 bytes a document: 220 MB for 3.7M documents)
        arr = pa.array(idx, type=pa.uint64())
        if ds._indices is not None:
            arr = ds._indices.column(0).take(arr)
        return datasets.Dataset(ds.data, info=ds.info.copy(), split=ds.split,
                                indices_table=InMemoryTable.from_arrays([arr], names=["indices"]), fingerprint=fp)
    return part(perm[n_val:], "train"), part(perm[:n_val], "test")


class TrainTexts:
    """``train_texts`` for ``Tokenizer.build``: calling it streams the training split's texts
    (Arrow batches, never the whole column as Python strings); ``fingerprint`` is the split's HF
    dataset fingerprint, so a tokenizer cache can be keyed on it without reading any text."""

    def __init__(self, ds, batch_size: int = 1000, fingerprint: str | None = None, text_field: str = "text",
                 max_docs: int | None = None):
        self.ds, self.batch_size, self.text_field, self.max_docs = ds, batch_size, text_field, max_docs
        self.fingerprint = fingerprint or getattr(ds, "_fingerprint", None)

    def __call__(self):
        return self  # re-iterable, as Tokenizer.build expects

    def __iter__(self):
        n = 0
        for batch in self.ds.select_columns([self.text_field]).iter(batch_size=self.batch_size):
            for t in batch[self.text_field]:
                if self.max_docs is not None and n >= self.max_docs:
                    return
                if isinstance(t, str):
                    n += 1
                    yield t


def build_tokenizer(run, corpus: Corpus | None = None, tok_cfg=None):
    """Train (or load from the cache) the configured tokenizer (or ``tok_cfg``, another tokenizer
    config, e.g. ``probe.cut_tokenizer``) on the training split."""
    corpus = corpus or load_corpus(run)
    tok_cfg = tok_cfg if tok_cfg is not None else run.tokenizer
    cls = TOKENIZER.get(tok_cfg.name)
    if corpus.streaming:
        # a stream may be endless: the tokenizer sees its first documents, as many as it may sample
        # lines from (a bounded prefix, not a sample of the whole stream)
        limit = getattr(tok_cfg, "train_max_sentences", 100_000)
        texts = TrainTexts(corpus.train, fingerprint=f"stream-{corpus.fingerprint}-first{limit}",
                           text_field=run.data.text_field, max_docs=limit)
    else:
        texts = TrainTexts(corpus.train)
    return cls.build(tok_cfg, texts, cache_dir(run))
