"""``task=lm``: language modelling on a text corpus (every data source except digits).

- Loss: next-token cross-entropy (+ any attention auxiliary loss, e.g. VQ commitment).
- Validation reports ``val/bpb``: total nats over the target tokens divided by the UTF-8 bytes
  those tokens stand for, over ln 2 -- comparable across tokenizers -- plus ``val/loss``, ``val/ppl``.
  Under DDP each rank scores a disjoint share of the validation blocks and the three sums are
  all-reduced before dividing, so the figure equals the one-process one over the same blocks.
- The tokenizer travels in the checkpoint as plain data (``Tokenizer.to_state``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lmlab.eval.metrics import bits_per_byte, nats_and_bytes
from lmlab.model.transformer import build_model
from lmlab.registry import TASK
from lmlab.tasks.base import StepLoss, Task, TaskConfig, TaskModule, model_weights


class LMModule(TaskModule):
    def __init__(self, run, tokenizer, bytes_len: torch.Tensor):
        super().__init__(run, tokenizer)
        self.model = build_model(run, tokenizer.vocab_size)
        if run.model.init_from:  # start from a local transformers checkpoint (a resume then overwrites)
            from lmlab.interop.imports import load_hf_into

            load_hf_into(self.model, run.model.init_from)
        self.register_buffer("bytes_len", bytes_len.clone(), persistent=False)

    def forward(self, idx):
        return self.model(idx)

    def step_loss(self, batch) -> StepLoss:
        tokens = batch["tokens"]  # (B, T+1)
        x, y = tokens[:, :-1], tokens[:, 1:]
        logits = self.model(x)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        aux = self.model.aux_loss()
        total = loss if aux is None else loss + aux
        return StepLoss(loss, total, y.numel(), int(self.bytes_len[y].sum()), aux)

    def step_metrics(self, batch, out) -> dict:
        return {f"train/{k}/layer{i}": v
                for i, b in enumerate(self.model.blocks) for k, v in b.attn.metrics().items()}

    def on_validation_epoch_start(self):
        self._val = torch.zeros(3, dtype=torch.float64)  # nats, tokens, bytes

    def val_step(self, batch) -> None:
        tokens = batch[0]
        x, y = tokens[:, :-1], tokens[:, 1:]
        nats, n_tok, n_bytes = nats_and_bytes(self.model(x), y, self.bytes_len)
        self._val += torch.tensor([nats, n_tok, n_bytes], dtype=torch.float64)

    def val_metrics(self):
        # each rank scored its own blocks (TextDataModule.val_dataloader): sum over ranks, then divide
        nats, n_tok, n_bytes = self.reduce_sum(self._val).tolist()
        if n_tok == 0:
            return None
        loss = nats / n_tok
        return {"loss": loss, "bpb": bits_per_byte(nats, n_bytes), "ppl": math.exp(min(loss, 50.0))}


@TASK.register("lm")
class LMTask(Task):
    Config = TaskConfig

    def make_datamodule(self):
        from lmlab.train.datamodule import TextDataModule

        return TextDataModule(self.run, log=self.log)

    def make_module(self) -> LMModule:
        dm = self.datamodule
        return LMModule(self.run, dm.tokenizer, dm.bytes_len)

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
        cut = None
        if self.run.probe.cut_tokenizer is not None:  # another tokenizer places the cuts (a cache hit in a sweep)
            from lmlab.data.corpus import build_tokenizer

            cut = build_tokenizer(self.run, self.datamodule.corpus, self.run.probe.cut_tokenizer)
        res = run_probe(model, self.datamodule.tokenizer, self.datamodule.corpus.val["text"], self.run.probe,
                        cut_tokenizer=cut)
        path = Path(run_dir) / "probe.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(res, indent=1, default=float))
        os.replace(tmp, path)
        return flatten(res)

    @classmethod
    def load_model(cls, run, ckpt: dict, tokenizer):
        model = build_model(run, tokenizer.vocab_size)
        model.load_state_dict(model_weights(ckpt))
        return model.eval()
