"""``data=pystdlib``: the Python standard library's own ``.py`` sources, a code corpus that is
always present (no download). One document per file, in sorted path order."""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.sources.base import DataConfig, DataSource, finish, read_text_file
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
        files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
        if not self.cfg.include_tests:
            files = [p for p in files if not ({"test", "tests", "idle_test"} & set(p.parts))]
        return files[: self.cfg.max_files] if self.cfg.max_files else files

    def load(self, cache_dir: str):
        texts = [t for p in self.files() if (t := read_text_file(p, self.cfg.strict_utf8, self.report))]
        return finish(texts, self.cfg, self.report, f"the Python stdlib at {sysconfig.get_paths()['stdlib']}")
