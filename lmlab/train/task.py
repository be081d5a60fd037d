"""How a kind of data plugs into training: a *task* builds the LightningModule and DataModule.

The data source names its task (``DataSource.task``): ``lm`` for text corpora (this file),
``image_text`` for the digits lab (``lmlab.multimodal.task``). A task provides:

- ``datamodule``  a LightningDataModule (its ``setup`` builds data and tokenizer);
- ``module()``    the LightningModule, built after ``datamodule.setup()``;
- ``summary()``   extra fields for ``summary.json`` after training;
- ``on_fit_end(run_dir)`` anything to write beside the run (plots, probes); returns extra summary fields.
"""

from __future__ import annotations

import importlib

TASKS = {
    "lm": "lmlab.train.task:LMTask",
    "image_text": "lmlab.multimodal.task:ImageTextTask",
}


def get_task(run, log=print):
    from lmlab.registry import DATA

    kind = getattr(DATA.get(run.data.name), "task", "lm")
    mod, _, cls = TASKS[kind].partition(":")
    return getattr(importlib.import_module(mod), cls)(run, log=log)


class LMTask:
    def __init__(self, run, log=print):
        from lmlab.train.datamodule import TextDataModule

        self.run = run
        self.log = log
        self.datamodule = TextDataModule(run, log=log)
        self._module = None

    def module(self):
        from lmlab.train.module import LMModule

        if self._module is None:
            dm = self.datamodule
            self._module = LMModule(self.run, dm.tokenizer, dm.bytes_len)
        return self._module

    def set_start_batch(self, n: int) -> None:
        self.datamodule.start_batch = n

    def summary(self) -> dict:
        m, dm = self.module(), self.datamodule
        return {
            "train_bytes_per_token": m.train_bytes / max(1, m.tokens_seen),
            "val_bytes_per_token": dm.val_bytes_per_token,
            "val_byte_unigram_entropy": dm.entropy_bits,
            "vocab_size": dm.tokenizer.vocab_size,
            "cache_elems_per_token": m.model.cache_elems_per_token(),
            "cache_state_elems": sum(b.attn.cache_state_elems() for b in m.model.blocks),
            "n_params": m.model.n_params(),
        }

    def on_fit_end(self, run_dir) -> dict:
        """The continuation probe (``probe.enabled``): probe.json beside the run, scalars for the summary."""
        if not self.run.probe.enabled:
            return {}
        import json
        import os
        from pathlib import Path

        from lmlab.eval.probe import flatten, run_probe

        model = self.module().model.eval()
        res = run_probe(model, self.datamodule.tokenizer, self.datamodule.corpus.val["text"], self.run.probe)
        path = Path(run_dir) / "probe.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=1, default=float))
        os.replace(tmp, path)
        return flatten(res)
