"""data=hf data.streaming=true: a local dataset read as an IterableDataset; the stream position
(including the reader's own) is saved and restored exactly; options needing random access fail
at config time."""

import json

import pytest
import torch
from torch.utils.data import DataLoader

from lmlab.data.pipeline import StreamingTrainStream, worker_init


class Tok:
    eos_id, vocab_size = 256, 258

    def __init__(self, sampling=False):
        self.sampling, self.seen = sampling, []

    def encode(self, text, rng=None):
        self.seen.append(text)
        out = []
        for b in text.encode():
            out.append(b)
            if rng is not None and rng.random() < 0.3:
                out.append(257)
        return out

    def bytes_table(self):
        return [bytes([i]) for i in range(256)] + [b"", b""]


def write_parts(d, n_parts=4, docs=30):
    files = []
    for k in range(n_parts):
        f = d / f"train-{k}.jsonl"
        f.write_text("".join(json.dumps({"text": f"part {k} doc {i} " + "xy" * (i % 9)}) + "\n"
                             for i in range(docs)))
        files.append(str(f))
    val = d / "val.jsonl"
    val.write_text("".join(json.dumps({"text": f"held out {i} " + "v" * 40}) + "\n" for i in range(50)))
    return files, str(val)


def source(files):
    import datasets

    return datasets.load_dataset("json", data_files=files, split="train", streaming=True)


def consume(stream, n, workers, dm):
    dl = DataLoader(stream, batch_size=None, num_workers=workers, worker_init_fn=worker_init if workers else None,
                    prefetch_factor=4 if workers else None)
    out = []
    for b in dl:
        out.append(dm.on_before_batch_transfer(b, 0)["tokens"])
        if len(out) == n:
            break
    return out


def recorder(workers):
    from types import SimpleNamespace

    from lmlab.train.datamodule import TextDataModule

    return TextDataModule(SimpleNamespace(data=SimpleNamespace(num_workers=workers)))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("start", [3, 40])  # mid-epoch; past the end of the first pass
def test_streaming_resume_is_exact(tmp_path, workers, start):
    files, _ = write_parts(tmp_path)
    tok = Tok(sampling=True)
    full = consume(StreamingTrainStream(source(files), "text", tok, 15, 2, 4), start + 5, workers, recorder(workers))
    dm = recorder(workers)
    first = consume(StreamingTrainStream(source(files), "text", tok, 15, 2, 4), start, workers, dm)
    torch.save({"dm": dm.state_dict()}, tmp_path / "s.pt")
    dm2 = recorder(workers)
    dm2.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True)["dm"])
    rest = consume(StreamingTrainStream(source(files), "text", tok, 15, 2, 4, state=dm2.stream_state), 5,
                   workers, dm2)
    assert len(rest) == 5
    assert all(torch.equal(x, y) for x, y in zip(full, first + rest, strict=True))


def test_streaming_resume_tokenizes_no_consumed_document(tmp_path):
    files, _ = write_parts(tmp_path, n_parts=1, docs=200)
    tok = Tok()
    dm = recorder(0)
    consume(StreamingTrainStream(source(files), "text", tok, 15, 2, 4), 100, 0, dm)
    consumed = set(tok.seen[: dm.stream_state["workers"][0]["pos"]])
    assert len(consumed) > 120  # late in the first pass (200 documents)
    tok.seen.clear()
    dm2 = recorder(0)
    dm2.load_state_dict(dm.state_dict())
    consume(StreamingTrainStream(source(files), "text", tok, 15, 2, 4, state=dm2.stream_state), 1, 0, dm2)
    assert tok.seen and not consumed & set(tok.seen) and len(tok.seen) <= 4


def test_streaming_end_to_end_and_config_errors(compose, tiny_overrides, tmp_path):
    from lmlab.config import ConfigError
    from lmlab.train.run import train

    files, val = write_parts(tmp_path, n_parts=2, docs=200)
    base = [o for o in tiny_overrides if not o.startswith(("data=", "data.max_files"))]
    over = base + ["data=hf", "data.path=json", f"data.data_files=[{','.join(files)}]", "data.streaming=true",
                   f"data.val_data_files=[{val}]", "data.num_workers=0", "run_name=st", "tokenizer.vocab_size=300"]
    s = train(compose(over), log=lambda *_: None)
    assert s["step"] == 6 and s["val_bpb"] == s["val_bpb"]
    with pytest.raises(ConfigError, match="data.streaming=true needs a held-out validation set"):
        compose([o for o in over if not o.startswith("data.val_data_files")])
    with pytest.raises(ConfigError, match="data.max_docs=5 needs random access"):
        compose(over + ["data.max_docs=5"])
