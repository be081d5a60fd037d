"""The checkpoint format holds tensors and plain data only, and one loader reads it: a crafted pickle
payload is never executed (by the loader, by resume, by a command), and a damaged or foreign file is
refused with one line naming it."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from lmlab.errors import CheckpointError
from lmlab.train.checkpoint import FORMAT, load_checkpoint, read_checkpoint
from lmlab.train.run import train


class Payload:
    """Unpickling this object writes a marker file: the proof that code from the file ran."""

    marker: str = ""

    def __reduce__(self):
        return (Path(self.marker).write_text, ("pwned",))


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory, cache_dir):
    from conftest import TINY

    from lmlab.config import compose

    out = tmp_path_factory.mktemp("ckpt")
    run = compose(TINY + [f"out_dir={out}", f"cache_dir={cache_dir}", "run_name=lm", "trainer.max_steps=3",
                          "trainer.val_every=3"])
    train(run, log=lambda *_: None)
    return run, out / "lm" / "checkpoints" / "last.ckpt"


def test_checkpoint_is_plain_data_and_loads_through_the_one_loader(lm_run):
    run, path = lm_run
    raw = torch.load(path, weights_only=True)  # plain torch, safe mode: no object but tensors and data
    assert raw["lmlab"]["format"] == FORMAT and raw["lmlab"]["task"] == "lm"
    assert isinstance(raw["lmlab"]["tokenizer"]["model"], bytes)
    assert isinstance(raw["lmlab"]["config"], dict)
    c = load_checkpoint(path)
    assert c.task == "lm" and c.step == 3 and not c.model.training
    assert c.run.model.d_model == run.model.d_model
    text = "def main():\n    return 1\n"
    from lmlab.train.datamodule import TextDataModule

    dm = TextDataModule(run, log=lambda *_: None)
    dm.setup("fit")
    assert c.tokenizer.encode(text) == dm.tokenizer.encode(text)  # rebuilt from bytes, same segmentation
    x = torch.tensor([c.tokenizer.encode(text)])
    w = {k[len("model."):]: v for k, v in raw["state_dict"].items() if k.startswith("model.")}
    assert all(torch.equal(c.model.state_dict()[k], w[k]) for k in w)
    assert c.model(x).shape[-1] == c.tokenizer.vocab_size


def _craft(src: Path, dst: Path, marker: Path) -> Path:
    ckpt = torch.load(src, weights_only=True)
    Payload.marker = str(marker)
    ckpt["lmlab"]["tokenizer"] = Payload()  # where an older lmlab kept a pickled tokenizer
    torch.save(ckpt, dst)
    return dst


def test_a_crafted_payload_is_refused_and_never_runs(lm_run, tmp_path):
    run, good = lm_run
    marker = tmp_path / "marker"
    evil = _craft(good, tmp_path / "evil.ckpt", marker)
    with pytest.raises(CheckpointError, match=f"{evil}: refused") as ei:
        load_checkpoint(evil)
    assert "\n" not in str(ei.value)
    from lmlab import cli

    # every command (generate, probe, export, eval, ...) loads through lmlab.cli.load_checkpoint: the
    # real command line refuses the file in one message, exit 2, and runs nothing
    for argv in (["generate", f"ckpt={evil}", "prompt=x"], ["probe", f"ckpt={evil}"],
                 ["export", f"ckpt={evil}", f"out={tmp_path / 'hf'}"]):
        assert cli.main(argv) == 2, argv
    with pytest.raises(CheckpointError, match=str(evil)):
        cli.load_checkpoint(evil)
    assert not marker.exists() and not (tmp_path / "hf").exists()


def test_resume_from_a_crafted_checkpoint_is_refused_and_never_runs(compose, tiny_overrides, lm_run, tmp_path):
    _, good = lm_run
    marker = tmp_path / "marker"
    run = compose(tiny_overrides + ["run_name=victim"])
    ckpt_dir = Path(run.out_dir) / "victim" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    _craft(good, ckpt_dir / "last.ckpt", marker)
    with pytest.raises(CheckpointError, match="victim/checkpoints/last.ckpt: refused"):
        train(run, log=lambda *_: None)
    assert not marker.exists()
    # the Lightning checkpoint IO (how trainer.fit reads a resume) goes through the same reader
    from lmlab.train.checkpointing import AtomicCheckpointIO

    with pytest.raises(CheckpointError, match="refused"):
        AtomicCheckpointIO().load_checkpoint(ckpt_dir / "last.ckpt", weights_only=False)
    assert not marker.exists()


def _damaged(good: Path, tmp: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00not a checkpoint\xff" * 50,
             "pickle": pickle.dumps({"a": 1})}
    out = {}
    for name, content in files.items():
        (tmp / f"{name}.ckpt").write_bytes(content)
        out[name] = tmp / f"{name}.ckpt"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(2)}}, buf)  # a torch file, but not lmlab's
    (tmp / "foreign.ckpt").write_bytes(buf.getvalue())
    out["foreign"] = tmp / "foreign.ckpt"
    old = torch.load(good, weights_only=True)
    del old["lmlab"]["format"]  # an older lmlab's layout
    torch.save(old, tmp / "old.ckpt")
    out["old"] = tmp / "old.ckpt"
    return out


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage", "pickle", "foreign", "old"])
def test_damaged_or_foreign_files_are_refused_naming_the_file(lm_run, tmp_path, kind):
    _, good = lm_run
    path = _damaged(good, tmp_path)[kind]
    with pytest.raises(CheckpointError) as ei:
        read_checkpoint(path)
    msg = str(ei.value)
    assert msg.startswith(str(path)) and "\n" not in msg, msg
    if kind == "foreign":
        assert "not an lmlab checkpoint" in msg
    if kind == "old":
        assert "format" in msg and "older lmlab" in msg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'nope.ckpt'}: no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.ckpt")


@pytest.mark.slow
def test_image_text_checkpoint_loads_the_best_weights(compose, tmp_path):
    from test_tasks import DIGITS

    run = compose([*DIGITS, f"out_dir={tmp_path}", "run_name=it"])
    train(run, log=lambda *_: None)
    c = load_checkpoint(tmp_path / "it/checkpoints/last.ckpt")
    assert c.task == "image_text" and c.tokenizer is None and not c.model.training
    best = c.state["extra"]["best_state"]
    assert best is not None and all(torch.equal(c.model.state_dict()[k], v) for k, v in best.items())


def test_the_tokenizer_hash_is_recorded_and_a_different_tokenizer_is_refused(lm_run, tmp_path):
    """The checkpoint records its tokenizer's sha256: the loader refuses a tokenizer that does not match
    it (damage), and resume refuses a run whose tokenizer (built from the cache) is another model."""
    from lmlab.errors import ResumeError
    from lmlab.tasks.lm import LMModule
    from lmlab.train.checkpoint import read_checkpoint

    run, path = lm_run
    ckpt = read_checkpoint(path)
    loaded = load_checkpoint(path)
    assert ckpt["lmlab"]["tokenizer_sha256"] == loaded.tokenizer.content_hash()
    module = LMModule(run, loaded.tokenizer, torch.ones(loaded.tokenizer.vocab_size))
    module.on_load_checkpoint(ckpt)  # the same tokenizer: accepted
    ckpt["lmlab"]["tokenizer_sha256"] = "0" * 64
    with pytest.raises(ResumeError, match="tokenizer sha256 0000"):
        module.on_load_checkpoint(ckpt)
    torch.save(ckpt, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="does not match the sha256"):
        load_checkpoint(tmp_path / "other.ckpt")
