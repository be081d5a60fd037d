"""``data=text data.paths=[a.txt,b.jsonl]``: the user's own files.

A ``.txt`` file is one document, or one per blank-line-separated paragraph with
``data.split=paragraph``; a ``.jsonl`` file holds one JSON object per line with the text under
``data.text_field`` (a bad line fails naming file and line). Read through the shared rules
(empty files, invalid UTF-8, short documents) of ``sources.base``.

Files are read in pieces (``read_text_chunks``; a ``.jsonl`` file line by line) and their documents
stored once in the document cache (``lmlab.data.doc_cache``, keyed on the files' paths, sizes and
mtimes and these settings): the corpus is never held in memory, only its largest document; later
starts open the cached dataset memory-mapped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmlab.data.doc_cache import cached_documents
from lmlab.data.sources.base import (
    DataConfig,
    DataError,
    DataSource,
    decode_utf8,
    doc_settings,
    keep_docs,
    read_text_chunks,
)
from lmlab.registry import DATA


@dataclass
class TextConfig(DataConfig):
    name: str = "text"
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    split: Literal["file", "paragraph"] = "file"

    def check(self, run) -> list[str]:
        p = super().check(run)
        if not self.paths:
            p.append("data.paths is empty: give files, e.g. data.paths=[corpus.txt]")
        return p


def split_paragraphs(text: str) -> list[str]:
    return [p.strip("\n") + "\n" for p in text.split("\n\n") if p.strip()]


def split_paragraphs_stream(pieces: Iterable[str]) -> Iterator[str]:
    """``split_paragraphs`` of the concatenated pieces, holding only the unfinished paragraph: the
    text after the last complete separator is re-split with the next piece, which continues
    ``str.split``'s left-to-right scan exactly."""
    rest = ""
    for piece in pieces:
        parts = (rest + piece).split("\n\n")
        rest = parts.pop()
        for p in parts:
            if p.strip():
                yield p.strip("\n") + "\n"
    if rest.strip():
        yield rest.strip("\n") + "\n"


@DATA.register("text")
class TextFiles(DataSource):
    Config = TextConfig

    def load(self, cache_dir: str):
        c = self.cfg
        for p in map(Path, c.paths):  # named before any work, as the old whole-file reader did
            if not p.exists():
                raise DataError(f"data file not found: {p}")
        settings = {**doc_settings(c), "split": c.split, "text_field": c.text_field}
        # whole files as documents: a writer batch of at most ~32 MB (paragraphs, jsonl lines: 10,000)
        largest = max((Path(p).stat().st_size for p in c.paths if Path(p).suffix != ".jsonl"), default=0)
        batch = 10_000 if c.split == "paragraph" else max(1, min(10_000, (32 << 20) // max(1, largest)))
        return cached_documents(cache_dir, "text", settings, [Path(p) for p in c.paths], self._docs, self.report,
                                batch_docs=batch)

    def _docs(self) -> Iterator[str]:
        return keep_docs(self._all_docs(), self.cfg, self.report, ", ".join(self.cfg.paths))

    def _all_docs(self) -> Iterator[str]:
        for p in map(Path, self.cfg.paths):
            if p.suffix == ".jsonl":
                yield from self._jsonl(p)
                continue
            pieces = read_text_chunks(p, self.cfg.strict_utf8, self.report)
            if self.cfg.split == "paragraph":
                yield from split_paragraphs_stream(pieces)
            else:
                empty = len(self.report.empty_files)
                t = "".join(pieces)  # one file is one document: the largest document is held, no more
                if len(self.report.empty_files) == empty:
                    yield t

    def _jsonl(self, path: Path) -> Iterator[str]:
        if not path.exists():
            raise DataError(f"data file not found: {path}")
        self.report.files += 1
        offset, nonblank = 0, False
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                line = raw[:-1] if raw.endswith(b"\n") else raw
                where = f"{path}:{lineno}"
                if line.strip():
                    nonblank = True
                    text = decode_utf8(line, f"{where} (file byte offset {offset})", self.cfg.strict_utf8,
                                       self.report)
                    try:
                        obj = json.loads(text)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{where}: not valid JSON ({e.msg})") from None
                    if not isinstance(obj, dict) or not isinstance(obj.get(self.cfg.text_field), str):
                        raise DataError(f"{where}: no string field '{self.cfg.text_field}' (set data.text_field)")
                    yield obj[self.cfg.text_field]
                offset += len(line) + 1
        if not nonblank:
            self.report.empty_files.append(str(path))
