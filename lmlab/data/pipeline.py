"""On-the-fly tokenization and packing.

Training (``PackedTrainStream``): an endless stream of batches (B, T+1). Epoch e visits the
documents in the order ``permutation(seed, e)``; worker w of W takes every W-th document of that
order. Each document is tokenized *each time it is read*, with ``rng = default_rng([seed, e, doc])``
when the tokenizer samples -- so a stochastic tokenizer draws a fresh segmentation every epoch, the
draw does not depend on which worker reads it, and a resumed run redraws exactly the same.
Documents end with EOS and are packed into non-overlapping blocks of T+1 tokens.

Under DDP each rank runs its own loader: stream (rank, worker) reads every (world x W)-th
document of the epoch's order, so ranks never train on the same batch.

Stream position (resume in O(1) of what was consumed): every batch carries ``"stream"``, the
position of the (rank, worker) stream that made it *after* that batch: ``wid`` (which of the W
streams), ``epoch``, ``pos`` (how many documents of that epoch's shard were read) and ``buf`` (the
packing buffer's leftover tokens). ``TextDataModule`` strips it before the batch reaches the model
and keeps, per worker, the one of the last batch training consumed (``on_before_batch_transfer``
runs in the training loop, not in the prefetching workers). A resumed stream starts each worker at
its saved position: no document consumed before is tokenized again. Batch order: the DataLoader
takes batches from workers round-robin starting at loader worker 0, so loader worker ``slot``
plays stream ``(slot + next_wid) mod W``, where ``next_wid`` is the stream whose batch was due
next; this needs the same W, which the checkpoint records and the resume checks.

Fallback (``start_batch``, a checkpoint without a stream position): each worker re-packs and
discards its share of the first ``start_batch`` batches -- exact, but its cost grows with the
batches consumed.

Streaming (``StreamingTrainStream``, ``data=hf data.streaming=true``): the documents come from an
HF ``IterableDataset`` read in its own order every epoch (no permutation: that needs random
access); stream (rank, worker) reads shard ``rank x W + worker`` of ``world x W`` (so the dataset
needs at least that many shards, i.e. files). Its position adds ``hf``, the IterableDataset's own
``state_dict()`` (shard and example offset), so a resume continues at the next document without
tokenizing any document read before. A sampling tokenizer draws with
``default_rng([seed, epoch, stream, pos])``.

Validation (``pack_eval``): deterministic segmentation, packed once, identical for every run that
shares the tokenizer; ``max_blocks`` stops tokenizing once enough blocks are packed (the blocks are
the same first blocks as without the cap).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info


class PackedTrainStream(IterableDataset):
    def __init__(self, texts, tokenizer, seq_len: int, batch_size: int, seed: int, start_batch: int = 0,
                 state: dict | None = None):
        self.texts = texts  # a datasets.Dataset column or list of str (random access by index)
        self.tokenizer = tokenizer
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.start_batch = start_batch
        # {"next_wid": int, "workers": {wid: {"epoch", "pos", "buf"}}} for this rank (see module doc)
        self.state = copy.deepcopy(state)  # the DataModule keeps updating its own copy

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
        epoch, pos, buf, skip = 0, 0, [], 0
        if self.state is not None:
            wid = (slot + int(self.state["next_wid"])) % nw
            ws = self.state["workers"].get(wid)
            if ws is not None:  # a stream that never delivered a batch starts at the beginning
                epoch, pos = int(ws["epoch"]), int(ws["pos"])
                buf = torch.as_tensor(ws["buf"]).tolist()
        else:
            # The loader polls workers round-robin from worker 0, so after resuming at global batch s,
            # loader worker `slot` must play the part of original worker (slot + s) mod nw; the batches
            # j < s that this original worker produced (j mod nw == wid) were already consumed.
            wid = (slot + self.start_batch) % nw
            skip = max(0, (self.start_batch - wid + nw - 1) // nw)
        yield from self._stream(wid, nw, epoch, pos, buf, skip)

    def _stream(self, wid: int, nw: int, epoch: int, pos: int, buf: list[int], skip: int):
        block = self.seq_len + 1
        need = block * self.batch_size
        eos = self.tokenizer.eos_id
        while True:
            order = self.shard(epoch, wid, nw)
            produced = False
            while True:
                while len(buf) >= need:
                    chunk, buf = buf[:need], buf[need:]
                    produced = True
                    if skip:
                        skip -= 1
                        continue
                    yield {"tokens": torch.tensor(chunk, dtype=torch.long).view(self.batch_size, block),
                           "epoch": epoch,
                           "stream": {"wid": wid, "epoch": epoch, "pos": pos,
                                      "buf": torch.tensor(buf, dtype=torch.long)}}
                if pos >= len(order):
                    break
                d = int(order[pos])
                pos += 1
                rng = np.random.default_rng([self.seed, epoch, d]) if self.tokenizer.sampling else None
                buf.extend(self.tokenizer.encode(self.texts[d], rng))
                buf.append(eos)
            if not produced and epoch > 0:
                raise RuntimeError(
                    f"worker {wid}: the training split holds fewer tokens than one batch "
                    f"({len(buf)} < {need} = data.batch_size x (model.seq_len+1)); use more data "
                    "or lower data.batch_size / model.seq_len / data.num_workers"
                )
            epoch, pos = epoch + 1, 0


class StreamingTrainStream(PackedTrainStream):
    def __init__(self, source, text_field: str, tokenizer, seq_len: int, batch_size: int, seed: int,
                 state: dict | None = None):
        super().__init__(None, tokenizer, seq_len, batch_size, seed, state=state)
        self.source, self.text_field = source, text_field  # a datasets.IterableDataset

    def part(self, wid: int, nw: int):
        rank, world = self._rank()
        n = world * nw
        return self.source if n == 1 else self.source.shard(num_shards=n, index=rank * nw + wid, contiguous=False)

    def __iter__(self):
        slot, nw = self._worker()
        epoch, pos, buf, hf_state, wid = 0, 0, [], None, slot
        if self.state is not None:
            wid = (slot + int(self.state["next_wid"])) % nw
            ws = self.state["workers"].get(wid)
            if ws is not None:
                epoch, pos = int(ws["epoch"]), int(ws["pos"])
                buf, hf_state = torch.as_tensor(ws["buf"]).tolist(), ws["hf"]
        rank, world = self._rank()
        stream_id = rank * nw + wid
        block = self.seq_len + 1
        need = block * self.batch_size
        eos = self.tokenizer.eos_id
        while True:
            ds = copy.deepcopy(self.part(wid, nw))  # a fresh reader per epoch
            ds.set_epoch(epoch)
            if hf_state is not None:
                ds.load_state_dict(hf_state)
                hf_state = None
            # .iter() reads this stream's shard as is (iterating the dataset itself inside a DataLoader
            # worker would split its shards by worker again)
            docs = ds.iter(batch_size=1)
            produced = False
            while True:
                while len(buf) >= need:
                    chunk, buf = buf[:need], buf[need:]
                    produced = True
                    yield {"tokens": torch.tensor(chunk, dtype=torch.long).view(self.batch_size, block),
                           "epoch": epoch,
                           "stream": {"wid": wid, "epoch": epoch, "pos": pos, "hf": ds.state_dict(),
                                      "buf": torch.tensor(buf, dtype=torch.long)}}
                ex = next(docs, None)
                if ex is None:
                    break
                pos += 1
                text = ex[self.text_field][0]
                if not isinstance(text, str):
                    continue
                rng = np.random.default_rng([self.seed, epoch, stream_id, pos]) if self.tokenizer.sampling else None
                buf.extend(self.tokenizer.encode(text, rng))
                buf.append(eos)
            if not produced and epoch > 0:
                raise RuntimeError(f"worker {wid}: its shard of the streamed training split holds fewer tokens "
                                   f"than one batch ({len(buf)} < {need}); use more data or fewer workers")
            epoch, pos = epoch + 1, 0


def pack_eval(texts, tokenizer, seq_len: int, max_blocks: int | None = None) -> torch.Tensor:
    """Deterministic segmentation of the texts in order (+EOS), packed into (N, T+1) blocks.

    With ``max_blocks``, tokenizing stops as soon as that many blocks are full: the result is the
    first ``max_blocks`` blocks of the uncapped packing, and later documents are never read."""
    ids: list[int] = []
    for t in texts:
        if max_blocks is not None and len(ids) >= max_blocks * (seq_len + 1):
            break
        ids.extend(tokenizer.encode(t))
        ids.append(tokenizer.eos_id)
    if max_blocks is not None:
        ids = ids[: max_blocks * (seq_len + 1)]
    n = len(ids) // (seq_len + 1)
    return torch.tensor(ids[: n * (seq_len + 1)], dtype=torch.long).view(n, seq_len + 1)


def byte_lengths(tokenizer) -> torch.Tensor:
    """(V,) number of UTF-8 bytes each token id stands for (0 for specials)."""
    return torch.tensor([len(b) for b in tokenizer.bytes_table()], dtype=torch.long)


def worker_context(num_workers: int):
    """The multiprocessing context of DataLoader workers: "fork" where the platform has it, named
    explicitly. Left to the default, a DataLoader inside a joblib (loky) sweep job inherits loky's
    context, whose process launcher cannot start torch's workers ('Process' object has no attribute
    'env'); fork is what Linux used by default anyway, so nothing else changes."""
    import multiprocessing as mp

    if num_workers <= 0 or "fork" not in mp.get_all_start_methods():
        return None
    return mp.get_context("fork")


def worker_init(_worker_id: int) -> None:
    # A tokenizer worker must not compete with the trainer's intra-op threads (docs/usage.md: threads and workers)
    torch.set_num_threads(1)
    try:
        import numba

        numba.set_num_threads(1)
    except Exception:  # noqa: BLE001 - numba is optional here
        pass
