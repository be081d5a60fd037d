"""LightningDataModule for text: corpus -> tokenizer -> training stream and validation blocks.

Stream position: the training stream's batches carry the position of the (rank, worker) stream
after that batch (``lmlab.data.pipeline``); ``on_before_batch_transfer`` -- called by Lightning in
the training loop just before the step, i.e. for the batch training *consumes*, not the ones the
workers prefetched -- strips it and records it. ``state_dict()`` (stored by Lightning in every
checkpoint, ints, strings and tensors only) holds, per rank, the position of each worker and which worker's
batch is due next; ``load_state_dict()`` restores it, and the next ``train_dataloader()`` starts
every worker exactly there. Under DDP every rank's position is gathered into the checkpoint (a
collective in ``state_dict()``, which Lightning calls on every rank). A checkpoint without a
position falls back to ``start_batch`` (re-pack and discard the consumed batches).
"""

from __future__ import annotations

import math
from collections import Counter

import lightning as L
import torch
from torch.utils.data import DataLoader

from lmlab.data.corpus import build_tokenizer, load_corpus
from lmlab.data.pipeline import (
    PackedTrainStream,
    StreamingTrainStream,
    byte_lengths,
    pack_eval,
    worker_context,
    worker_init,
)
from lmlab.data.sources.base import DataError


def byte_unigram_entropy(data: bytes) -> float:
    """Entropy (bits) of the byte distribution of the text: the bits/byte of a model that knows only
    byte frequencies -- the baseline any trained model must beat."""
    counts = Counter(data)
    n = sum(counts.values())
    return -sum(c / n * math.log2(c / n) for c in counts.values())


class TextColumn:
    """``texts[i]`` of a datasets.Dataset's ``text`` column without copying it into a list (the
    stream reads documents by index; a memory-mapped dataset stays on disk, also in workers).
    Reads the Arrow column directly: ``Dataset.__getitem__`` costs ~100x more per document."""

    def __init__(self, ds):
        self.ds = ds
        self._bind()

    def _bind(self) -> None:
        self.col = self.ds.data.column("text")
        self.idx = None if self.ds._indices is None else self.ds._indices.column(0).to_numpy()

    def __getstate__(self):  # workers get the Dataset (a file reference when memory-mapped)
        return {"ds": self.ds}

    def __setstate__(self, state):
        self.ds = state["ds"]
        self._bind()

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> str:
        j = int(i) if self.idx is None else int(self.idx[int(i)])
        return self.col[j].as_py()


def utf8_bytes(ds) -> int:
    """UTF-8 bytes of a Dataset's ``text`` column, from each Arrow chunk's first and last offset (no
    Python strings, no pass over the column: two offsets per chunk of a memory-mapped table); a
    split (indices mapping) is estimated from its share of the underlying table."""
    import numpy as np
    import pyarrow as pa

    table = ds.data
    total = 0
    for chunk in table.column("text").chunks:
        if len(chunk):  # the offsets buffer, zero-copy; a sliced chunk starts at chunk.offset
            width = np.int64 if pa.types.is_large_string(chunk.type) else np.int32
            offsets = np.frombuffer(chunk.buffers()[1], dtype=width)
            total += int(offsets[chunk.offset + len(chunk)]) - int(offsets[chunk.offset])
    return total if ds._indices is None else round(total * len(ds) / max(1, table.num_rows))


class TextDataModule(L.LightningDataModule):
    def __init__(self, run, log=print):
        super().__init__()
        self.run = run
        self.log = log
        self.start_batch = 0  # fallback on resume without a saved stream position (batches consumed)
        self.corpus = None
        self.tokenizer = None
        # stream position of this rank: None until a batch was consumed or a checkpoint restored
        self.stream_state: dict | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        run = self.run
        self.corpus = load_corpus(run)
        for line in self.corpus.report.lines():
            self.log(f"data: {line}")
        streaming = self.corpus.streaming
        if streaming:
            import torch.distributed as dist

            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            streams = world * max(1, run.data.num_workers)
            if self.corpus.train.n_shards < streams:
                raise DataError(
                    f"data.streaming=true: the training split has {self.corpus.train.n_shards} shard(s) (files), "
                    f"fewer than the {streams} streams (data.num_workers x processes) that each read one; "
                    "use more files or a lower data.num_workers"
                )
        self.tokenizer = build_tokenizer(run, self.corpus)
        # random access into the Arrow table: no Python copy of the training split
        self.train_texts = None if streaming else TextColumn(self.corpus.train)
        # a fixed subset, the same for every run with this tokenizer and seq_len: the first blocks of
        # the validation documents in split order; documents past them are never tokenized
        if streaming:
            used: list[str] = []
            field = run.data.text_field

            def val_texts():
                for ex in self.corpus.val:
                    if isinstance(ex.get(field), str):
                        used.append(ex[field])
                        yield ex[field]
            texts = val_texts()
        else:
            texts = self.corpus.val["text"]
        self.val_blocks = pack_eval(texts, self.tokenizer, run.model.seq_len,
                                    max_blocks=run.data.batch_size * run.trainer.limit_val_batches)
        if streaming:  # keep (as a small Dataset) only the held-out documents that are scored
            import datasets

            self.corpus.val = datasets.Dataset.from_dict({"text": used})
        if len(self.val_blocks) == 0:
            raise DataError(
                f"the validation split ({len(self.corpus.val)} documents) holds fewer than model.seq_len+1="
                f"{run.model.seq_len + 1} tokens: use a larger corpus, a larger data.val_fraction, "
                "or a smaller model.seq_len"
            )
        self.bytes_len = byte_lengths(self.tokenizer)
        targets = self.val_blocks[:, 1:]
        val_tokens = targets.numel()
        self.val_bytes_per_token = float(self.bytes_len[targets].sum()) / val_tokens
        # a stream's size is unknown until read: the estimate and its check are for datasets only
        train_bytes = float("nan") if streaming else utf8_bytes(self.corpus.train)
        est_train_tokens = train_bytes / self.val_bytes_per_token
        need = run.data.batch_size * (run.model.seq_len + 1) * max(1, run.data.num_workers)
        if not streaming and est_train_tokens < need:
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
            + ("train streamed" if streaming else f"train ~{est_train_tokens:,.0f} tokens")
        )

    def train_dataloader(self) -> DataLoader:
        run = self.run
        if self.stream_state is None and self.start_batch and not self.corpus.streaming:
            self.log(f"data: the checkpoint holds no stream position; re-packing the {self.start_batch} "
                     "batches already consumed to find the place")
        if self.corpus.streaming:
            if self.stream_state is None and self.start_batch:
                raise DataError("data.streaming=true: the checkpoint holds no stream position, and a stream "
                                "cannot be re-read to find its place")
            stream = StreamingTrainStream(self.corpus.train, run.data.text_field, self.tokenizer, run.model.seq_len,
                                          run.data.batch_size, run.seed, state=self.stream_state)
        else:
            stream = PackedTrainStream(
                self.train_texts, self.tokenizer, run.model.seq_len, run.data.batch_size, run.seed,
                start_batch=self.start_batch, state=self.stream_state,
            )
        nw = run.data.num_workers
        return DataLoader(
            stream, batch_size=None, num_workers=nw, worker_init_fn=worker_init if nw else None,
            persistent_workers=False, prefetch_factor=4 if nw else None, multiprocessing_context=worker_context(nw),
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

    # ---- stream position (see the module docstring) ----

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if isinstance(batch, dict) and "stream" in batch:
            pos = batch.pop("stream")
            nw = max(1, self.run.data.num_workers)
            wid = int(pos["wid"])
            st = self.stream_state or {"next_wid": 0, "workers": {}}
            st["workers"][wid] = {"epoch": int(pos["epoch"]), "pos": int(pos["pos"]), "buf": pos["buf"].clone()}
            if "hf" in pos:  # a streamed source's own reader position (ints and strings)
                st["workers"][wid]["hf"] = pos["hf"]
            st["next_wid"] = (wid + 1) % nw
            self.stream_state = st
        return batch

    def state_dict(self) -> dict:
        if self.stream_state is None:
            return {}
        nw = max(1, self.run.data.num_workers)
        mine = {"next_wid": int(self.stream_state["next_wid"]),
                "workers": [self._worker_entry(w) for w in range(nw)]}
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        return {"version": 1, "num_workers": nw, "world_size": len(ranks), "ranks": ranks}

    def _worker_entry(self, wid: int) -> dict:
        ws = self.stream_state["workers"].get(wid)
        if ws is None:  # never delivered a batch: starts from the beginning
            return {"epoch": -1, "pos": 0, "buf": torch.zeros(0, dtype=torch.long)}
        return {k: ws[k] for k in ("epoch", "pos", "buf", "hf") if k in ws}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        if state.get("version") != 1:
            raise DataError(f"checkpoint stream position has version {state.get('version')}, expected 1")
        import torch.distributed as dist

        distributed = dist.is_available() and dist.is_initialized()
        rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
        nw = max(1, self.run.data.num_workers)
        if state["num_workers"] != nw or state["world_size"] != world:
            raise DataError(
                f"the checkpoint's stream position is for {state['world_size']} process(es) x "
                f"{state['num_workers']} worker(s), this run has {world} x {nw} (data.num_workers, "
                "trainer.devices/num_nodes): resume with the same ones"
            )
        mine = state["ranks"][rank]
        self.stream_state = {
            "next_wid": int(mine["next_wid"]),
            "workers": {w: {"epoch": int(e["epoch"]), "pos": int(e["pos"]), "buf": torch.as_tensor(e["buf"]),
                            **({"hf": e["hf"]} if "hf" in e else {})}
                        for w, e in enumerate(mine["workers"]) if int(e["epoch"]) >= 0},
        }
