"""``data=hf data.path=NAME``: any Hugging Face dataset, local or (only when asked) from the hub.

Offline by default: ``HF_DATASETS_OFFLINE=1``/``HF_HUB_OFFLINE=1`` stay set unless ``data.online=true``,
so a name that is not in the local cache fails with a clear message instead of a download.
``data.path`` may be a hub name, a local dataset directory saved with ``save_to_disk``, or a builder
name (``json``, ``text``, ``parquet``) with ``data.data_files``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lmlab.data.sources.base import DataConfig, DataError, DataSource, finish
from lmlab.registry import DATA


@dataclass
class HFConfig(DataConfig):
    name: str = "hf"
    path: str = ""
    config_name: Optional[str] = None
    split: str = "train"
    data_files: list[str] = field(default_factory=list)
    text_field: str = "text"
    online: bool = False

    def check(self, run) -> list[str]:
        p = super().check(run)
        if not self.path:
            p.append("data.path is empty: name a dataset (hub name, local dir, or json/text with data.data_files)")
        return p


@DATA.register("hf")
class HFDataset(DataSource):
    Config = HFConfig

    def load(self, cache_dir: str):
        import datasets

        c = self.cfg
        if c.online:
            os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "0"
        try:
            if Path(c.path).is_dir() and (Path(c.path) / "dataset_info.json").exists():
                ds = datasets.load_from_disk(c.path)
                if isinstance(ds, datasets.DatasetDict):
                    ds = ds[c.split]
            else:
                ds = datasets.load_dataset(
                    c.path, c.config_name, split=c.split, data_files=c.data_files or None
                )
        except Exception as e:  # noqa: BLE001 - re-raised with the config keys named
            hint = "" if c.online else " (offline: set data.online=true to allow a hub download)"
            raise DataError(f"could not load data.path='{c.path}' split '{c.split}'{hint}: {e}") from None
        if c.text_field not in ds.column_names:
            raise DataError(f"dataset '{c.path}' has no column '{c.text_field}' "
                            f"(columns: {', '.join(ds.column_names)}); set data.text_field")
        self.report.files = 1
        return finish([t for t in ds[c.text_field] if isinstance(t, str)], c, self.report, c.path)
