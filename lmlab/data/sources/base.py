"""The data-source interface and the shared reading rules for bad input.

A source returns an HF ``datasets.Dataset`` with a ``text`` column, one row per document. Reading
rules (shared by every source, counted in ``ReadReport`` and printed at start-up):

- empty files are skipped and counted; an all-empty corpus fails fast naming the files;
- invalid UTF-8 is replaced (U+FFFD) and counted by default; with ``data.strict_utf8=true`` it
  fails naming the file and the byte offset;
- documents shorter than ``data.min_chars`` are dropped and counted.

File-backed sources (``text``, ``pystdlib``, ``shakespeare``) yield their documents one at a time
(``read_text_chunks``, ``keep_docs``) into ``lmlab.data.doc_cache``, which stores them once as a
memory-mapped Arrow dataset: no source holds its corpus in memory.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lmlab.errors import LmlabError


class DataError(LmlabError, ValueError):
    """Bad input data (a missing or unreadable file, an empty corpus); the message names it."""


@dataclass
class DataConfig:
    name: str = "text"
    batch_size: int = 16
    num_workers: int = 1  # tokenizer worker processes (see docs/usage.md: threads and workers)
    val_fraction: float = 0.05
    val_seed: int = 0  # the held-out split is fixed by this, not by the run seed
    min_chars: int = 1
    strict_utf8: bool = False
    max_docs: int = 0  # 0 = all; a cap for quick runs and tests

    uses_val_fraction = True  # False in a source with its own fixed split (its val_fraction is unused)

    def check(self, run) -> list[str]:
        p = []
        if self.batch_size <= 0:
            p.append(f"data.batch_size={self.batch_size} must be positive")
        if self.num_workers < 0:
            p.append(f"data.num_workers={self.num_workers} must be >= 0")
        if self.uses_val_fraction and not 0.0 < self.val_fraction < 1.0:
            p.append(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        return p


@dataclass
class ReadReport:
    files: int = 0
    empty_files: list[str] = field(default_factory=list)
    replaced_utf8: int = 0  # documents in which invalid bytes were replaced
    short_docs: int = 0
    docs: int = 0
    chars: int = 0
    notes: list[str] = field(default_factory=list)  # e.g. a damaged cache that was rebuilt

    def lines(self) -> list[str]:
        out = [*self.notes, f"{self.docs} documents, {self.chars:,} characters from {self.files} file(s)"]
        if self.empty_files:
            out.append(f"skipped {len(self.empty_files)} empty file(s): {', '.join(self.empty_files[:5])}")
        if self.replaced_utf8:
            out.append(f"replaced invalid UTF-8 in {self.replaced_utf8} document(s) (data.strict_utf8=true to fail)")
        if self.short_docs:
            out.append(f"dropped {self.short_docs} document(s) shorter than data.min_chars")
        return out


def decode_utf8(raw: bytes, where: str, strict: bool, report: ReadReport) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        if strict:
            raise DataError(
                f"{where}: invalid UTF-8 at byte offset {e.start} (data.strict_utf8=true)"
            ) from None
        report.replaced_utf8 += 1
        return raw.decode("utf-8", errors="replace")


def read_text_file(path: Path, strict: bool, report: ReadReport) -> str | None:
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    raw = path.read_bytes()
    report.files += 1
    if not raw.strip():
        report.empty_files.append(str(path))
        return None
    text = decode_utf8(raw, str(path), strict, report)
    return text.replace("\r\n", "\n").replace("\r", "\n")


CHUNK_BYTES = 1 << 20  # read size of the streaming readers (1 MiB: a few copies of it are held at once)

_replaced = [0]  # invalid byte sequences replaced by the "lmlab-count-replace" handler


def _count_replace(e: UnicodeDecodeError):
    _replaced[0] += 1
    return "\ufffd", e.end  # exactly what errors="replace" substitutes


codecs.register_error("lmlab-count-replace", _count_replace)


def read_text_chunks(path: Path, strict: bool, report: ReadReport) -> Iterator[str]:
    """The file's text in pieces of about ``CHUNK_BYTES``, decoded and with line endings normalized
    exactly as ``read_text_file`` does for the whole file (an incremental UTF-8 decoder; a ``\\r``
    at a piece's end waits for the next piece). The same accounting: the file is counted, a
    whitespace-only file is recorded as empty (it yields only whitespace), a file with invalid UTF-8
    is counted once or, strict, fails naming the file's byte offset."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    report.files += 1
    dec = codecs.getincrementaldecoder("utf-8")("strict" if strict else "lmlab-count-replace")
    before, fed, nonblank, cr = _replaced[0], 0, False, ""
    with open(path, "rb") as f:
        while True:
            raw = f.read(CHUNK_BYTES)
            final = not raw
            nonblank = nonblank or bool(raw.strip())
            pending = len(dec.getstate()[0])
            try:
                text = dec.decode(raw, final=final)
            except UnicodeDecodeError as e:  # e.start counts from the decoder's pending bytes
                raise DataError(f"{path}: invalid UTF-8 at byte offset {fed - pending + e.start} "
                                "(data.strict_utf8=true)") from None
            fed += len(raw)
            text = cr + text
            cr = ""
            if not final and text.endswith("\r"):
                text, cr = text[:-1], "\r"
            if text:
                yield text.replace("\r\n", "\n").replace("\r", "\n")
            if final:
                break
    if not nonblank:
        report.empty_files.append(str(path))
    elif _replaced[0] != before:
        report.replaced_utf8 += 1


def keep_docs(texts: Iterable[str], cfg: DataConfig, report: ReadReport, what: str) -> Iterator[str]:
    """``finish``'s rules as a stream: drop (and count) documents shorter than ``data.min_chars``,
    stop after ``data.max_docs``, count what is kept; no document at all fails naming ``what``.
    With ``data.max_docs``, reading stops there (short documents after it are not counted)."""
    n = chars = 0
    for t in texts:
        if len(t) < max(cfg.min_chars, 1):
            report.short_docs += 1
            continue
        n, chars = n + 1, chars + len(t)
        report.docs, report.chars = n, chars
        yield t
        if cfg.max_docs and n >= cfg.max_docs:
            return
    if not n:
        raise DataError(f"no training text in {what}")


def doc_settings(cfg: DataConfig) -> dict:
    """The reading rules every file-backed source's document cache is keyed on."""
    return {"min_chars": cfg.min_chars, "max_docs": cfg.max_docs, "strict_utf8": cfg.strict_utf8}


def finish(texts: list[str], cfg: DataConfig, report: ReadReport, what: str):
    """Apply the short-document rule and the cap, and build an in-memory Dataset (``data=hf`` with a
    non-string text column; the file-backed sources use ``keep_docs`` and the document cache)."""
    import datasets

    kept = []
    for t in texts:
        if len(t) < max(cfg.min_chars, 1):
            report.short_docs += 1
        else:
            kept.append(t)
    if cfg.max_docs:
        kept = kept[: cfg.max_docs]
    if not kept:
        raise DataError(f"no training text in {what}")
    report.docs, report.chars = len(kept), sum(map(len, kept))
    return datasets.Dataset.from_dict({"text": kept})


class DataSource:
    Config = DataConfig
    task = "lm"  # the task (conf/task, lmlab/tasks) this source feeds; the task's check enforces it

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        self.report = ReadReport()

    def load(self, cache_dir: str):
        """-> datasets.Dataset with a 'text' column."""
        raise NotImplementedError
