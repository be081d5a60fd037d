"""``data=pystdlib``: the Python standard library's own ``.py`` sources, a code corpus that is
always present (no download). One document per file, in sorted path order, stored once in the
document cache (``lmlab.data.doc_cache``, keyed on every file's path, size and mtime)."""

from __future__ import annotations

import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.doc_cache import cached_documents
from lmlab.data.sources.base import DataConfig, DataSource, doc_settings, keep_docs, read_text_file
from lmlab.registry import DATA


@dataclass
class PyStdlibConfig(DataConfig):
    name: str = "pystdlib"
    max_files: int = 0  # 0 = every file; tests use a few
    include_tests: bool = False


@DATA.register("pystdlib")
class PyStdlib(DataSource):
    Config = PyStdlibConfig

    def files(self) -> list[Path]:
        root = Path(sysconfig.get_paths()["stdlib"])
        files = []
        # os.walk pruning site-packages (the same files as rglob("*.py") minus site-packages, which
        # rglob would walk in full: seconds with torch installed)
        for d, dirs, names in os.walk(root):
            dirs[:] = [x for x in dirs if x != "site-packages"]
            files.extend(Path(d) / n for n in names if n.endswith(".py"))
        files.sort()
        if not self.cfg.include_tests:
            files = [p for p in files if not ({"test", "tests", "idle_test"} & set(p.parts))]
        return files[: self.cfg.max_files] if self.cfg.max_files else files

    def load(self, cache_dir: str):
        files = self.files()
        settings = {**doc_settings(self.cfg), "max_files": self.cfg.max_files, "include_tests": self.cfg.include_tests}

        def docs():
            texts = (t for p in files if (t := read_text_file(p, self.cfg.strict_utf8, self.report)))
            return keep_docs(texts, self.cfg, self.report, f"the Python stdlib at {sysconfig.get_paths()['stdlib']}")
        largest = max((p.stat().st_size for p in files), default=0)  # a writer batch of at most ~32 MB
        return cached_documents(cache_dir, "pystdlib", settings, files, docs, self.report,
                                batch_docs=max(1, min(10_000, (32 << 20) // max(1, largest))))
