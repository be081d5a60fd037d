"""Checkpoint files are written atomically; failures leave the previous checkpoint loadable."""

import errno
from pathlib import Path

import pytest
import torch

from lmlab.train.checkpointing import AtomicCheckpointIO, resolve_resume


def test_failed_save_leaves_no_partial_file_and_previous_loads(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def disk_full(obj, f, *a, **k):
        f.write(b"partial bytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=f"could not write checkpoint in {path.parent}: No space left"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no .tmp left behind
    assert torch.load(path, weights_only=False)["step"] == 1


def test_failed_delete_does_not_raise(tmp_path, monkeypatch, capsys):
    p = tmp_path / "old.ckpt"
    p.write_bytes(b"x")
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: (_ for _ in ()).throw(PermissionError("ro")))
    AtomicCheckpointIO().remove_checkpoint(p)
    assert "could not delete old checkpoint" in capsys.readouterr().out


def fake_ckpt(path, step):
    """A minimal file read_checkpoint accepts, recording ``step``."""
    from lmlab.train.checkpoint import FORMAT

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "lmlab": {"format": FORMAT}}, path)


def test_resume_resolution(tmp_path):
    d = tmp_path / "checkpoints"
    assert resolve_resume("auto", d) is None
    assert resolve_resume(False, d) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        resolve_resume(True, d)
    with pytest.raises(FileNotFoundError, match="no such checkpoint file"):
        resolve_resume(str(tmp_path / "x.ckpt"), d)
    fake_ckpt(d / "last.ckpt", 3)
    assert resolve_resume("auto", d) == str(d / "last.ckpt")
    assert resolve_resume(True, d) == str(d / "last.ckpt")
    assert resolve_resume(False, d) is None


def test_resume_from_a_run_folder_takes_its_newest_loadable_checkpoint(tmp_path):
    """resume=RUN_NAME (train.py turns it into the run's checkpoint folder) behaves like resume=auto on
    that folder: a damaged last.ckpt is skipped and named, the newest loadable step file is taken."""
    other = tmp_path / "other" / "checkpoints"
    fake_ckpt(other / "step-4.ckpt", 4)
    fake_ckpt(other / "step-6.ckpt", 6)
    (other / "last.ckpt").write_bytes(b"truncated")
    logs = []
    assert resolve_resume(str(other), tmp_path / "mine", log=logs.append) == str(other / "step-6.ckpt")
    assert len(logs) == 1 and str(other / "last.ckpt") in logs[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"resume={empty}: no checkpoint in it"):
        resolve_resume(str(empty), tmp_path / "mine")
    (empty / "last.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no loadable checkpoint in it"):
        resolve_resume(str(empty), tmp_path / "mine", log=logs.append)
