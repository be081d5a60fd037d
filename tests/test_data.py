"""Data: bad input gets a clear, counted outcome; the packed stream is seeded, worker-independent
in its draws, and resumable batch for batch."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lmlab.data.pipeline import PackedTrainStream, pack_eval, worker_init
from lmlab.data.sources.base import DataError
from lmlab.data.sources.text import TextConfig, TextFiles
from lmlab.eval.metrics import bits_per_byte, nats_and_bytes


def load_text(paths, **kw):
    src = TextFiles(TextConfig(paths=[str(p) for p in paths], **kw))
    return src, src.load(str(Path(paths[0]).parent / "cache"))  # the document cache beside the files


def test_empty_files_skipped_and_counted(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("  \n\n")
    src, ds = load_text([tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"])
    assert ds["text"] == ["hello world\n"]
    assert len(src.report.empty_files) == 2
    assert any("skipped 2 empty file(s)" in line for line in src.report.lines())


def test_all_empty_corpus_fails_fast(tmp_path):
    (tmp_path / "b.txt").write_text("")
    with pytest.raises(DataError, match="no training text in .*b.txt"):
        load_text([tmp_path / "b.txt"])


def test_one_file_is_one_document_and_the_error_says_how_to_split_it(compose, tmp_path):
    from lmlab.data.corpus import load_corpus

    (tmp_path / "one.txt").write_text("First paragraph.\n\nSecond paragraph.\n\nThird.\n")
    base = ["data=text", f"data.paths=[{tmp_path / 'one.txt'}]", f"cache_dir={tmp_path / 'cache'}"]
    with pytest.raises(DataError, match="got 1; one file is one document: data.split=paragraph"):
        load_corpus(compose(base))
    corpus = load_corpus(compose(base + ["data.split=paragraph", "data.min_chars=1"]))
    assert len(corpus.train) + len(corpus.val) == 3


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="data file not found: .*nope.txt"):
        load_text([tmp_path / "nope.txt"])


def test_invalid_utf8_replaced_and_counted_or_strict_error(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"caf\xc3\xa9 ok\n\xff\xfe tail\n")
    src, ds = load_text([p])
    assert ds["text"][0] == "café ok\n\ufffd\ufffd tail\n"
    assert src.report.replaced_utf8 == 1
    with pytest.raises(DataError, match=r"bad.txt: invalid UTF-8 at byte offset 9"):
        load_text([p], strict_utf8=True)


def test_jsonl_bad_line_named(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "one"}\n{"text": 2}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: no string field 'text'"):
        load_text([p])
    p.write_text('{"text": "one"}\n{oops\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_text([p])


def test_short_documents_dropped_and_counted(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("a long enough paragraph here\n\nhi\n\nanother long paragraph\n")
    src, ds = load_text([p], split="paragraph", min_chars=10)
    assert len(ds) == 2 and src.report.short_docs == 1


class ToyTokenizer:
    """Bytes as tokens; with ``sampling``, each byte is randomly doubled by a marker id so that the
    rng's draws are visible in the ids."""

    eos_id = 256
    vocab_size = 258

    def __init__(self, sampling=False):
        self.sampling = sampling

    def encode(self, text, rng=None):
        out = []
        for b in text.encode():
            out.append(b)
            if rng is not None and rng.random() < 0.3:
                out.append(257)
        return out

    def bytes_table(self):
        return [bytes([i]) for i in range(256)] + [b"", b""]


DOCS = [f"document {i} " + "abcdefghij"[i % 10] * (5 + i % 7) for i in range(40)]


def _batches(stream, n, workers):
    dl = DataLoader(stream, batch_size=None, num_workers=workers,
                    worker_init_fn=worker_init if workers else None)
    out = []
    for b in dl:
        out.append(b["tokens"])
        if len(out) == n:
            break
    return out


def test_same_seed_same_batches_and_fresh_draws_each_epoch():
    tok = ToyTokenizer(sampling=True)
    a = _batches(PackedTrainStream(DOCS, tok, 15, 2, seed=7), 30, 0)
    b = _batches(PackedTrainStream(DOCS, tok, 15, 2, seed=7), 30, 0)
    c = _batches(PackedTrainStream(DOCS, tok, 15, 2, seed=8), 30, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    # a document's segmentation is redrawn per epoch: the same doc read twice gives other ids
    d = 3
    e0 = tok.encode(DOCS[d], np.random.default_rng([7, 0, d]))
    e1 = tok.encode(DOCS[d], np.random.default_rng([7, 1, d]))
    assert e0 != e1


def _recorder(workers):
    """The DataModule's stream-position bookkeeping, outside a Trainer."""
    from types import SimpleNamespace

    from lmlab.train.datamodule import TextDataModule

    return TextDataModule(SimpleNamespace(data=SimpleNamespace(num_workers=workers)))


def _consume(stream, n, workers, dm):
    """Batches as training consumes them: the stream position stripped and recorded by ``dm``."""
    dl = DataLoader(stream, batch_size=None, num_workers=workers,
                    worker_init_fn=worker_init if workers else None, prefetch_factor=4 if workers else None)
    out = []
    for b in dl:
        b = dm.on_before_batch_transfer(b, 0)
        assert "stream" not in b
        out.append(b["tokens"])
        if len(out) == n:
            break
    return out


def _saved(dm, tmp_path):
    """state_dict through a checkpoint file loaded with weights_only=True."""
    torch.save({"dm": dm.state_dict()}, tmp_path / "s.pt")
    return torch.load(tmp_path / "s.pt", weights_only=True)["dm"]


@pytest.mark.parametrize("sampling", [False, True])
@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [1, 7, 40])  # mid-epoch, later, past an epoch boundary
def test_resume_from_saved_stream_position_is_exact(workers, start, sampling, tmp_path):
    tok = ToyTokenizer(sampling=sampling)
    full = _batches(PackedTrainStream(DOCS, tok, 15, 2, seed=3), start + 6, workers)
    dm = _recorder(workers)
    first = _consume(PackedTrainStream(DOCS, tok, 15, 2, seed=3), start, workers, dm)
    dm2 = _recorder(workers)
    dm2.load_state_dict(_saved(dm, tmp_path))
    resumed = _consume(PackedTrainStream(DOCS, tok, 15, 2, seed=3, state=dm2.stream_state), 6, workers, dm2)
    assert len(resumed) == 6
    for x, y in zip(full, first + resumed, strict=True):
        assert torch.equal(x, y)
    # and a second resume from the resumed run's own position continues the same sequence
    dm3 = _recorder(workers)
    dm3.load_state_dict(_saved(dm2, tmp_path))
    again = _consume(PackedTrainStream(DOCS, tok, 15, 2, seed=3, state=dm3.stream_state), 3, workers, dm3)
    more = _batches(PackedTrainStream(DOCS, tok, 15, 2, seed=3), start + 9, workers)[start + 6:]
    assert all(torch.equal(x, y) for x, y in zip(more, again, strict=True))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [1, 7, 40])
def test_fallback_resume_skips_exactly_the_consumed_batches(workers, start):
    """A checkpoint without a stream position: the start_batch skip is still exact."""
    tok = ToyTokenizer(sampling=True)
    full = _batches(PackedTrainStream(DOCS, tok, 15, 2, seed=3), start + 6, workers)
    resumed = _batches(PackedTrainStream(DOCS, tok, 15, 2, seed=3, start_batch=start), 6, workers)
    for x, y in zip(full[start:], resumed):
        assert torch.equal(x, y)


class CountingTokenizer(ToyTokenizer):
    def __init__(self):
        super().__init__()
        self.seen = []

    def encode(self, text, rng=None):
        self.seen.append(text)
        return super().encode(text, rng)


def test_resume_late_in_an_epoch_tokenizes_no_consumed_document(tmp_path):
    docs = [f"doc {i:03d} " + "xyz" * (3 + i % 5) for i in range(400)]
    tok = CountingTokenizer()
    dm = _recorder(0)
    stream = PackedTrainStream(docs, tok, 15, 2, seed=1)
    _consume(stream, 220, 0, dm)  # late in epoch 0 (of ~300 batches)
    pos = dm.stream_state["workers"][0]
    assert pos["epoch"] == 0 and pos["pos"] > 250
    consumed = {docs[int(d)] for d in stream.shard(0, 0, 1)[: pos["pos"]]}
    tok.seen.clear()
    dm2 = _recorder(0)
    dm2.load_state_dict(_saved(dm, tmp_path))
    _consume(PackedTrainStream(docs, tok, 15, 2, seed=1, state=dm2.stream_state), 1, 0, dm2)
    assert tok.seen and not consumed & set(tok.seen)
    assert len(tok.seen) <= 3  # one batch needs at most a few short documents
    # the fallback (no saved position) re-tokenizes every consumed document: what this replaces
    tok.seen.clear()
    _batches(PackedTrainStream(docs, tok, 15, 2, seed=1, start_batch=220), 1, 0)
    assert consumed <= set(tok.seen)


def test_resume_refuses_another_worker_count(tmp_path):
    dm = _recorder(2)
    _consume(PackedTrainStream(DOCS, ToyTokenizer(), 15, 2, seed=3), 3, 2, dm)
    with pytest.raises(DataError, match=r"1 process\(es\) x 2 worker\(s\), this run has 1 x 1"):
        _recorder(1).load_state_dict(_saved(dm, tmp_path))


def test_stream_too_small_fails_instead_of_hanging():
    tok = ToyTokenizer()
    with pytest.raises(RuntimeError, match="fewer tokens than one batch"):
        _batches(PackedTrainStream(["tiny"], tok, 64, 4, seed=0), 1, 0)


def test_eval_packing_is_deterministic_and_ends_documents_with_eos():
    tok = ToyTokenizer(sampling=True)
    blocks = pack_eval(["ab", "cd"], tok, 2)  # a b EOS c d EOS -> two blocks of 3
    assert blocks.tolist() == [[97, 98, 256], [99, 100, 256]]


def test_eval_cap_gives_the_first_blocks_and_reads_no_further_document():
    docs = [f"validation document {i} " * (1 + i % 3) for i in range(50)]
    full = pack_eval(docs, ToyTokenizer(), 15)
    tok = CountingTokenizer()
    capped = pack_eval(docs, tok, 15, max_blocks=4)
    assert torch.equal(capped, full[:4])
    used = 4 * 16  # tokens in 4 blocks; a document adds len+1 tokens
    n_needed = next(k for k in range(1, 51) if sum(len(d.encode()) + 1 for d in docs[:k]) >= used)
    assert len(tok.seen) == n_needed


def test_bits_per_byte_on_a_hand_checked_batch():
    # two targets standing for 1 and 3 bytes, given probabilities 1/2 and 1/4:
    # nats = ln 2 + ln 4 = 3 ln 2 over 4 bytes -> 0.75 bits per byte
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]]))
    targets = torch.tensor([[0, 2]])
    bytes_len = torch.tensor([1, 5, 3])
    nats, n_tok, n_bytes = nats_and_bytes(logits, targets, bytes_len)
    assert n_tok == 2 and n_bytes == 4
    assert math.isclose(nats, 3 * math.log(2), rel_tol=1e-6)
    assert math.isclose(bits_per_byte(nats, n_bytes), 0.75, rel_tol=1e-6)


def test_ddp_ranks_and_workers_read_disjoint_documents(monkeypatch):
    """Two ranks x two workers: in every epoch the four streams partition the documents."""
    stream = PackedTrainStream(DOCS, ToyTokenizer(), 15, 2, seed=5)
    for epoch in range(3):
        shares = []
        for rank in range(2):
            monkeypatch.setattr(stream, "_rank", lambda r=rank: (r, 2))
            shares += [set(stream.shard(epoch, w, 2).tolist()) for w in range(2)]
        assert all(shares) and sum(map(len, shares)) == len(set().union(*shares)) == len(DOCS)
    monkeypatch.setattr(stream, "_rank", lambda: (0, 1))  # one process: workers still partition
    assert sorted(stream.shard(0, 0, 2).tolist() + stream.shard(0, 1, 2).tolist()) == list(range(len(DOCS)))


def test_text_column_reads_the_split_by_index_also_after_pickling():
    import pickle

    import datasets

    from lmlab.train.datamodule import TextColumn

    ds = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(200)]})
    split = ds.train_test_split(test_size=20, seed=0)["train"]  # an indices mapping over the table
    col = TextColumn(split)
    again = pickle.loads(pickle.dumps(col))
    assert len(col) == 180 and [col[i] for i in range(180)] == list(split["text"]) == [again[i] for i in range(180)]


def test_hf_local_dataset_is_selected_in_arrow_without_a_python_copy(tmp_path):
    """data=hf on a save_to_disk directory keeps the same documents as the list path (strings of at
    least min_chars, at most max_docs, in order), counts the short ones, and stays memory-mapped."""
    import datasets

    from lmlab.data.sources.hf import HFConfig, HFDataset

    body = ["a long enough document", None, "tiny", "another long document here", "third long one, kept"]
    datasets.Dataset.from_dict({"body": body, "n": list(range(5))}).save_to_disk(str(tmp_path / "ds"))
    src = HFDataset(HFConfig(path=str(tmp_path / "ds"), text_field="body", min_chars=10))
    ds = src.load("/nonexistent-cache")
    assert list(ds["text"]) == [body[0], body[3], body[4]] and ds.column_names == ["text"]
    assert (src.report.docs, src.report.short_docs) == (3, 1)
    assert src.report.chars == sum(len(body[i]) for i in (0, 3, 4))
    assert ds.cache_files and all(str(tmp_path / "ds") in f["filename"] for f in ds.cache_files)
    capped = HFDataset(HFConfig(path=str(tmp_path / "ds"), text_field="body", min_chars=10, max_docs=2))
    assert list(capped.load("/nonexistent-cache")["text"]) == [body[0], body[3]]
