"""On-the-fly tokenization and packing.

Training (``PackedTrainStream``): an endless stream of batches (B, T+1). Epoch e visits the
documents in the order ``permutation(seed, e)``; worker w of W takes every W-th document of that
order. Each document is tokenized *each time it is read*, with ``rng = default_rng([seed, e, doc])``
when the tokenizer samples -- so a stochastic tokenizer draws a fresh segmentation every epoch, the
draw does not depend on which worker reads it, and a resumed run redraws exactly the same.
Documents end with EOS and are packed into non-overlapping blocks of T+1 tokens.

Under DDP each rank runs its own loader: stream (rank, worker) reads every (world x W)-th
document of the epoch's order, so ranks never train on the same batch.

Batch order: the DataLoader takes batches from workers round-robin, so global batch j is worker
(j mod W)'s (j div W)-th batch. Resuming after s batches, each worker skips its share and the
workers' roles rotate by s so the round-robin continues where it stopped; this needs the same W,
which the checkpoint records and the resume checks.

Validation (``pack_eval``): deterministic segmentation, packed once, identical for every run that
shares the tokenizer.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


class PackedTrainStream(IterableDataset):
    def __init__(self, texts, tokenizer, seq_len: int, batch_size: int, seed: int, start_batch: int = 0):
        self.texts = texts  # a datasets.Dataset column or list of str
        self.tokenizer = tokenizer
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.start_batch = start_batch

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info else (0, 1)

    def _rank(self) -> tuple[int, int]:
        """(rank, world size) under torch.distributed (DDP), else (0, 1)."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def shard(self, epoch: int, wid: int, nw: int) -> np.ndarray:
        """Document indices this (rank, worker) stream reads in ``epoch``, in order: every
        (world x W)-th document of the epoch's permutation, so ranks and workers never overlap."""
        rank, world = self._rank()
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.texts))[rank * nw + wid :: world * nw]

    def __iter__(self):
        slot, nw = self._worker()
        # The loader polls workers round-robin from worker 0, so after resuming at global batch s,
        # loader worker `slot` must play the part of original worker (slot + s) mod nw; the batches
        # j < s that this original worker produced (j mod nw == wid) were already consumed.
        wid = (slot + self.start_batch) % nw
        skip = max(0, (self.start_batch - wid + nw - 1) // nw)
        block = self.seq_len + 1
        need = block * self.batch_size
        eos = self.tokenizer.eos_id
        buf: list[int] = []
        epoch = 0
        while True:
            order = self.shard(epoch, wid, nw)
            produced = False
            for d in order:
                rng = np.random.default_rng([self.seed, epoch, int(d)]) if self.tokenizer.sampling else None
                buf.extend(self.tokenizer.encode(self.texts[int(d)], rng))
                buf.append(eos)
                while len(buf) >= need:
                    chunk, buf = buf[:need], buf[need:]
                    produced = True
                    if skip:
                        skip -= 1
                        continue
                    yield {"tokens": torch.tensor(chunk, dtype=torch.long).view(self.batch_size, block),
                           "epoch": epoch}
            if not produced and epoch > 0:
                raise RuntimeError(
                    f"worker {wid}: the training split holds fewer tokens than one batch "
                    f"({len(buf)} < {need} = data.batch_size x (model.seq_len+1)); use more data "
                    "or lower data.batch_size / model.seq_len / data.num_workers"
                )
            epoch += 1


def pack_eval(texts, tokenizer, seq_len: int) -> torch.Tensor:
    """Deterministic segmentation of every text (+EOS), packed into (N, T+1) blocks."""
    ids: list[int] = []
    for t in texts:
        ids.extend(tokenizer.encode(t))
        ids.append(tokenizer.eos_id)
    n = len(ids) // (seq_len + 1)
    return torch.tensor(ids[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def byte_lengths(tokenizer) -> torch.Tensor:
    """(V,) number of UTF-8 bytes each token id stands for (0 for specials)."""
    return torch.tensor([len(b) for b in tokenizer.bytes_table()], dtype=torch.long)


def worker_init(_worker_id: int) -> None:
    # A tokenizer worker must not compete with the trainer's intra-op threads (README: threads)
    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)
    except Exception:  # noqa: BLE001 - numba is optional here
        pass
