"""``data=hf data.path=NAME``: any Hugging Face dataset, local or (only when asked) from the hub.

Offline by default: ``HF_DATASETS_OFFLINE=1``/``HF_HUB_OFFLINE=1`` stay set unless ``data.online=true``,
so a name that is not in the local cache fails with a clear message instead of a download.
``data.path`` may be a hub name, a local dataset directory saved with ``save_to_disk``, or a builder
name (``json``, ``text``, ``parquet``) with ``data.data_files``.

Streaming (``data.streaming=true``): the training split is read as an ``IterableDataset`` (never
loaded whole; a hub dataset needs ``data.online=true``), and validation comes from a held-out split
named by ``data.val_split`` (e.g. ``validation``) or files ``data.val_data_files``, of which only
the first documents needed for ``trainer.limit_val_batches`` batches are read. Options that need
random access are refused at config time: ``data.max_docs``; ``data.val_fraction`` and
``data.min_chars`` do not apply (the held-out split is given, documents are not counted).
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
    streaming: bool = False  # read as an IterableDataset (see the module docstring)
    val_split: Optional[str] = None  # streaming: the held-out split's name
    val_data_files: list[str] = field(default_factory=list)  # streaming: held-out files

    def check(self, run) -> list[str]:
        p = super().check(run)
        if not self.path:
            p.append("data.path is empty: name a dataset (hub name, local dir, or json/text with data.data_files)")
        if self.streaming:
            if not self.val_split and not self.val_data_files:
                p.append("data.streaming=true needs a held-out validation set: data.val_split=NAME "
                         "or data.val_data_files=[...]")
            if self.val_split and self.val_data_files:
                p.append("data.val_split and data.val_data_files both set: give one")
            if self.max_docs:
                p.append(f"data.max_docs={self.max_docs} needs random access and is not supported with "
                         "data.streaming=true")
        elif self.val_split or self.val_data_files:
            p.append("data.val_split/data.val_data_files apply with data.streaming=true only "
                     "(otherwise data.val_fraction holds out documents)")
        return p


@DATA.register("hf")
class HFDataset(DataSource):
    Config = HFConfig

    def _open(self, data_files, split, streaming):
        import datasets

        c = self.cfg
        if Path(c.path).is_dir() and (Path(c.path) / "dataset_info.json").exists():
            ds = datasets.load_from_disk(c.path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
            return ds.to_iterable_dataset(num_shards=max(1, len(ds.cache_files))) if streaming else ds
        return datasets.load_dataset(c.path, c.config_name, split=split, data_files=data_files or None,
                                     streaming=streaming)

    def load_streaming(self, cache_dir: str):
        """-> (train, val) IterableDatasets and a fingerprint of what they read (for caches)."""
        import hashlib
        import json

        c = self.cfg
        if c.online:
            os.environ["HF_DATASETS_OFFLINE"] = os.environ["HF_HUB_OFFLINE"] = "0"
        try:
            train = self._open(c.data_files, c.split, True)
            if c.val_data_files:
                val = self._open(c.val_data_files, "train", True)
            else:
                val = self._open(c.data_files if c.data_files else None, c.val_split, True)
        except Exception as e:  # noqa: BLE001 - re-raised with the config keys named
            hint = "" if c.online else " (offline: set data.online=true to allow a hub download)"
            raise DataError(f"could not stream data.path='{c.path}' (split '{c.split}', held-out "
                            f"'{c.val_split or c.val_data_files}'){hint}: {e}") from None
        if train.column_names is not None and c.text_field not in train.column_names:
            raise DataError(f"dataset '{c.path}' has no column '{c.text_field}' "
                            f"(columns: {', '.join(train.column_names)}); set data.text_field")
        # identity of the data read: the config, and each local file's size and modification time
        files = [f for f in [*c.data_files, *c.val_data_files, c.path] if Path(f).exists()]
        ident = {"path": c.path, "config_name": c.config_name, "split": c.split, "data_files": c.data_files,
                 "text_field": c.text_field,
                 "files": [[str(f), Path(f).stat().st_size, Path(f).stat().st_mtime_ns] for f in files]}
        self.report.files = train.n_shards
        return train, val, hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]

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
        import pyarrow as pa

        kind = ds.data.schema.field(c.text_field).type
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            return self._select(ds)
        return finish([t for t in ds[c.text_field] if isinstance(t, str)], c, self.report, c.path)

    def _select(self, ds):
        """The same documents as ``finish`` keeps (strings of at least ``data.min_chars``
        characters, at most ``data.max_docs``), chosen in Arrow as an index list over the
        dataset's own (memory-mapped) table: no Python copy of the text."""
        import numpy as np
        import pyarrow.compute as pc

        c = self.cfg
        if ds._indices is not None:
            ds = ds.flatten_indices(keep_in_memory=True)
        col = ds.data.column(c.text_field)
        lengths = pc.fill_null(pc.utf8_length(col), -1).to_numpy(zero_copy_only=False)
        valid = lengths >= 0
        keep = np.flatnonzero(lengths >= max(c.min_chars, 1))
        self.report.short_docs += int(valid.sum()) - len(keep)
        if c.max_docs:
            keep = keep[: c.max_docs]
        if len(keep) == 0:
            raise DataError(f"no training text in {c.path}")
        self.report.docs, self.report.chars = len(keep), int(lengths[keep].sum())
        ds = ds.select_columns([c.text_field])
        if c.text_field != "text":
            ds = ds.rename_column(c.text_field, "text")
        return ds if len(keep) == len(ds) else ds.select(keep, keep_in_memory=True)
