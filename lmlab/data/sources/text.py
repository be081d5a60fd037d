"""``data=text data.paths=[a.txt,b.jsonl]``: the user's own files.

A ``.txt`` file is one document, or one per blank-line-separated paragraph with
``data.split=paragraph``; a ``.jsonl`` file holds one JSON object per line with the text under
``data.text_field`` (a bad line fails naming file and line). Read through the shared rules
(empty files, invalid UTF-8, short documents) of ``sources.base``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lmlab.data.sources.base import DataConfig, DataError, DataSource, decode_utf8, finish, read_text_file
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


@DATA.register("text")
class TextFiles(DataSource):
    Config = TextConfig

    def load(self, cache_dir: str):
        texts: list[str] = []
        for p in map(Path, self.cfg.paths):
            if p.suffix == ".jsonl":
                texts.extend(self._jsonl(p))
                continue
            t = read_text_file(p, self.cfg.strict_utf8, self.report)
            if t is not None:
                texts.extend(split_paragraphs(t) if self.cfg.split == "paragraph" else [t])
        return finish(texts, self.cfg, self.report, ", ".join(self.cfg.paths))

    def _jsonl(self, path: Path) -> list[str]:
        if not path.exists():
            raise DataError(f"data file not found: {path}")
        raw = path.read_bytes()
        self.report.files += 1
        if not raw.strip():
            self.report.empty_files.append(str(path))
            return []
        out = []
        offset = 0
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            where = f"{path}:{lineno}"
            if line.strip():
                text = decode_utf8(line, f"{where} (file byte offset {offset})", self.cfg.strict_utf8, self.report)
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as e:
                    raise DataError(f"{where}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(self.cfg.text_field), str):
                    raise DataError(f"{where}: no string field '{self.cfg.text_field}' (set data.text_field)")
                out.append(obj[self.cfg.text_field])
            offset += len(line) + 1
        return out
