"""LightningDataModule for text: corpus -> tokenizer -> training stream and validation blocks."""

from __future__ import annotations

import math
from collections import Counter

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmlab.data.corpus import build_tokenizer, load_corpus
from lmlab.data.pipeline import PackedTrainStream, byte_lengths, pack_eval, worker_init
from lmlab.data.sources.base import DataError


def byte_unigram_entropy(data: bytes) -> float:
    """Entropy (bits) of the byte distribution of the text: the bits/byte of a model that knows only
    byte frequencies -- the baseline any trained model must beat."""
    counts = Counter(data)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


class TextDataModule(L.LightningDataModule):
    def __init__(self, run, log=print):
        super().__init__()
        self.run = run
        self.log = log
        self.start_batch = 0  # set on resume (batches already consumed)
        self.corpus = None
        self.tokenizer = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        run = self.run
        self.corpus = load_corpus(run)
        for line in self.corpus.report.lines():
            self.log(f"data: {line}")
        self.tokenizer = build_tokenizer(run, self.corpus)
        self.train_texts = list(self.corpus.train["text"])
        val_texts = list(self.corpus.val["text"])
        blocks = pack_eval(val_texts, self.tokenizer, run.model.seq_len)
        # a fixed subset, the same for every run with this tokenizer and seq_len
        self.val_blocks = blocks[: run.data.batch_size * run.trainer.limit_val_batches]
        if len(self.val_blocks) == 0:
            raise DataError(
                f"the validation split ({len(val_texts)} documents) holds fewer than model.seq_len+1="
                f"{run.model.seq_len + 1} tokens: use a larger corpus, a larger data.val_fraction, "
                "or a smaller model.seq_len"
            )
        self.bytes_len = byte_lengths(self.tokenizer)
        targets = self.val_blocks[:, 1:]
        val_tokens = targets.numel()
        self.val_bytes_per_token = float(self.bytes_len[targets].sum()) / val_tokens
        train_bytes = sum(len(t.encode("utf-8")) for t in self.train_texts)
        est_train_tokens = train_bytes / self.val_bytes_per_token
        need = run.data.batch_size * (run.model.seq_len + 1) * max(1, run.data.num_workers)
        if est_train_tokens < need:
            raise DataError(
                f"the training split (~{est_train_tokens:.0f} tokens) is smaller than one batch per "
                f"worker ({need} tokens = data.batch_size x (model.seq_len+1) x data.num_workers)"
            )
        # the baseline is measured on exactly the bytes the validation targets stand for
        table = self.tokenizer.bytes_table()
        val_bytes = b"".join(table[t] for t in targets.flatten().tolist())
        self.entropy_bits = byte_unigram_entropy(val_bytes) if run.trainer.entropy_baseline else float("nan")
        self.log(
            f"tokenizer: {type(self.tokenizer).__name__} vocab {self.tokenizer.vocab_size}, "
            f"val {val_tokens:,} tokens ({self.val_bytes_per_token:.2f} bytes/token), "
            f"train ~{est_train_tokens:,.0f} tokens"
        )

    def train_dataloader(self) -> DataLoader:
        run = self.run
        stream = PackedTrainStream(
            self.train_texts, self.tokenizer, run.model.seq_len, run.data.batch_size, run.seed,
            start_batch=self.start_batch,
        )
        nw = run.data.num_workers
        return DataLoader(
            stream, batch_size=None, num_workers=nw, worker_init_fn=worker_init if nw else None,
            persistent_workers=False, prefetch_factor=4 if nw else None,
        )

    def val_dataloader(self) -> DataLoader:
        """This rank's share of the validation blocks: every world-th block from its rank on, so the
        ranks together score each block exactly once (Lightning's DistributedSampler would pad the
        last share with repeats; the Trainer runs with ``use_distributed_sampler=False``)."""
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer is not None else (0, 1)
        if len(self.val_blocks) < world:
            raise DataError(
                f"{len(self.val_blocks)} validation blocks cannot give each of {world} processes one: "
                "raise trainer.limit_val_batches or data.val_fraction"
            )
        return DataLoader(torch.utils.data.TensorDataset(self.val_blocks[rank::world]),
                          batch_size=self.run.data.batch_size)
