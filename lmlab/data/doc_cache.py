"""The documents of a file-backed source (``text``, ``pystdlib``, ``shakespeare``), written once into a
memory-mapped Arrow dataset in the lmlab cache and opened memory-mapped at every later start.

What it guarantees:

- **Built by streaming.** The source yields its documents one at a time (a file, a paragraph) and HF
  ``Dataset.from_generator`` writes them in Arrow record batches: building holds one writer batch
  and the largest document (a whole file with ``data.split=file``), never the corpus. Documents are
  stored in the order the source yields them, so the training split, the validation split and the
  batches are those of the old in-memory path.
- **Keyed without reading text.** The entry ``<cache>/corpora/docs/<source>-<k>/`` is named by a hash
  ``k`` of the source settings and the file paths; the dataset's fingerprint ``<source>-<f>`` by a hash
  of the settings plus every source file's (absolute path, size, mtime_ns). An edited file (size or
  mtime changed) gives another fingerprint: the entry is rebuilt and the stale version removed. The
  fingerprint is the HF fingerprint of the dataset, from which the train split's fingerprint (the
  tokenizer cache key) follows, so nothing hashes the text at start.
- **Verified.** ``manifest-<f>.json``, written after the data (temp file + ``os.replace``), records the
  size and mtime_ns of each Arrow file, the row count and the read report. Every start checks the
  files against it (``stat`` only) and opens them: a missing, truncated, extended, rewritten or
  unreadable file, or a missing or unreadable manifest, is reported in one line naming the path
  (``corpus cache PATH: ...; rebuilding it``) and the entry rebuilt. Not detected: an in-place edit that
  keeps a file's size and mtime (detecting that means reading the whole corpus at every start).
- **Atomic and safe under concurrency.** HF writes into an ``.incomplete`` directory and renames it;
  the whole build (and the manifest) runs under a per-entry file lock (``filelock``, HF's own), so two
  processes starting at once build once: the second waits, then opens the first's. A process killed
  mid-build leaves no manifest (its lock is released by the OS): the next start rebuilds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from lmlab.errors import LmlabError

FORMAT = 1  # bump when the stored layout or a source's document rule changes


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_identity(paths: Iterable[Path]) -> list[list]:
    """[absolute path, size, mtime_ns] of each file (a missing file is left to the source to name)."""
    out = []
    for p in paths:
        p = Path(p).absolute()
        try:
            st = p.stat()
            out.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            out.append([str(p), None, None])
    return out


def _arrow_files(entry: Path, fp: str) -> Path:
    return entry / "generator" / f"default-fingerprint={fp}"


def _open(entry: Path, man: dict):
    import datasets
    from datasets.table import MemoryMappedTable, concat_tables

    tables = [MemoryMappedTable.from_file(str(entry / f)) for f in man["files"]]
    table = tables[0] if len(tables) == 1 else concat_tables(tables)
    return datasets.Dataset(table, fingerprint=man["fingerprint"])


def _problem(entry: Path, fp: str) -> tuple[str | None, object, dict | None]:
    """(why the entry cannot be used or None, the opened dataset, the manifest)."""
    man_path = entry / f"manifest-{fp}.json"
    if not man_path.exists():
        if _arrow_files(entry, fp).exists():
            return f"{man_path} is missing (an interrupted build)", None, None
        return "", None, None  # nothing there: a first build, no note
    try:
        man = json.loads(man_path.read_text())
        files = man["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{man_path} is not a readable manifest", None, None
    if man.get("fingerprint") != fp or man.get("format") != FORMAT:
        return f"{man_path} was written for other settings", None, None
    for rel, (size, mtime) in files.items():
        f = entry / rel
        try:
            st = f.stat()
        except OSError:
            return f"{f} is missing", None, None
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            return f"{f} does not match its recorded size and mtime (truncated, damaged or replaced)", None, None
    try:
        ds = _open(entry, man)
    except Exception as e:  # noqa: BLE001 - any unreadable Arrow file means: rebuild
        return f"{entry} cannot be read ({type(e).__name__}: {str(e)[:200]})", None, None
    if len(ds) != man.get("rows"):
        return f"{entry} holds {len(ds)} documents, its manifest {man.get('rows')}", None, None
    return None, ds, man


def cached_documents(cache_dir: str, source: str, settings: dict, files: list[Path],
                     docs: Callable[[], Iterator[str]], report, batch_docs: int = 10_000) -> object:
    """The documents ``docs()`` yields, as a memory-mapped ``datasets.Dataset`` with a ``text`` column,
    built once under ``<cache_dir>/corpora/docs`` (see the module docstring). ``report`` (a
    ``ReadReport``) is filled by ``docs()`` when it builds, and restored from the manifest otherwise.

    ``batch_docs``: documents per Arrow record batch, i.e. what the writer holds before it flushes
    (a source with large documents passes fewer). Opening the dataset reads one message header per
    batch, and the kernel maps the pages around each (fault-around): measured, 24 MB of resident
    file pages for a 50 MB corpus in batches of 1,000 paragraphs, 2.4 MB in batches of 10,000."""
    import datasets
    from datasets.exceptions import DatasetGenerationError
    from filelock import FileLock

    ident = file_identity(files)
    entry = Path(cache_dir) / "corpora" / "docs" / f"{source}-{_hash([FORMAT, settings, [i[0] for i in ident]])}"
    fp = f"{source}-{_hash([FORMAT, settings, ident])}"

    def restore(man):
        for k, v in man["report"].items():
            if k != "notes":
                setattr(report, k, v)

    problem, ds, man = _problem(entry, fp)
    if problem is None:  # the common case: no lock, no text read
        restore(man)
        return ds
    entry.mkdir(parents=True, exist_ok=True)
    with FileLock(str(entry / f".build-{fp}.lock")):
        problem, ds, man = _problem(entry, fp)  # another process may have built it meanwhile
        if problem is None:
            restore(man)
            return ds
        if problem:
            report.notes.append(f"corpus cache {problem}; rebuilding it")
        shutil.rmtree(_arrow_files(entry, fp), ignore_errors=True)
        (entry / f"manifest-{fp}.json").unlink(missing_ok=True)

        def gen():
            for t in docs():
                yield {"text": t}

        try:
            ds = datasets.Dataset.from_generator(
                gen, features=datasets.Features({"text": datasets.Value("string")}), cache_dir=str(entry),
                fingerprint=fp, writer_batch_size=max(1, batch_docs))
        except DatasetGenerationError as e:
            if isinstance(e.__cause__, LmlabError):  # the source's own one-line error (a bad file)
                raise e.__cause__ from None
            raise
        rel = [str(Path(f["filename"]).relative_to(entry)) for f in ds.cache_files]
        man = {"format": FORMAT, "fingerprint": fp, "source": source, "settings": settings, "inputs": ident,
               "rows": len(ds), "report": {k: v for k, v in asdict(report).items() if k != "notes"},
               "files": {r: [(entry / r).stat().st_size, (entry / r).stat().st_mtime_ns] for r in rel}}
        tmp = entry / f".manifest-{fp}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(man, indent=1))
        os.replace(tmp, entry / f"manifest-{fp}.json")
        # older versions of this entry (the source files changed since): removed, they cannot be used again
        for old in (entry / "generator").glob("default-fingerprint=*"):
            if old.name != f"default-fingerprint={fp}":
                shutil.rmtree(old, ignore_errors=True)
        for old in entry.glob("manifest-*.json"):
            if old.name != f"manifest-{fp}.json":
                old.unlink(missing_ok=True)
        # the dataset HF returned is the one just written; reopen it the way later starts do, so the
        # first run and every later run read exactly the same object
        return _open(entry, man)
