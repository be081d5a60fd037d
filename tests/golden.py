"""Golden losses: the exact per-step training losses (``float.hex``) of two tiny CPU runs, one per task.

``tests/test_golden.py`` reruns them and diffs against ``tests/golden/<case>.json`` bit for bit, so any
change to the numerics -- model, loss, data order, seeding, optimizer, tokenizer training -- shows up.
When such a change is intended, regenerate the files and commit them with the change:

    python -m tests.golden            # from the repository root; rewrites tests/golden/*.json

The text case trains on ``tests/golden/corpus.txt`` (committed, so the result does not depend on the
installed Python's stdlib); the image-text case on scikit-learn's bundled digits. Exactness assumes the
pinned torch (``.ci/run``) and one torch thread.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent / "golden"

COMMON = ["trainer.max_steps=8", "trainer.val_every=100", "trainer.log_every=1", "trainer.progress_bar=false",
          "trainer.num_threads=1", "trainer.entropy_baseline=false", "model.n_layer=2", "model.n_head=4",
          "model.dropout=0.1", "optim.warmup_steps=2", "resume=false"]

CASES = {
    "lm": ["data=text", f"data.paths=[{HERE / 'corpus.txt'}]", "data.num_workers=0", "data.batch_size=4",
           "data.val_fraction=0.1", "data.split=paragraph", "model.d_model=32", "model.seq_len=32", "tokenizer.vocab_size=400",
           "tokenizer.num_threads=1", "trainer.limit_val_batches=1"],
    "image_text": ["data=digits", "task=image_text", "data.batch_size=8", "data.max_docs=64",
                   "model.d_model=32", "model.seq_len=48", "model.mlp=gelu", "task.samples_per_class=1",
                   "task.eval_split=val"],
}


def losses(case: str, out_dir: str, cache_dir: str) -> list[str]:
    """Per-step training losses of ``case`` as ``float.hex`` strings (step 0 first)."""
    import lightning as L
    import torch

    from lmlab.config import compose
    from lmlab.train.run import train

    class Record(L.Callback):
        def __init__(self):
            self.values: list[str] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.values.append(float(pl_module.last_train_loss).hex())

    torch.set_num_threads(1)
    run = compose([*COMMON, *CASES[case], f"out_dir={out_dir}", f"cache_dir={cache_dir}", f"run_name=golden-{case}"])
    rec = Record()
    train(run, log=lambda *_: None, callbacks=[rec])
    return rec.values


def path(case: str) -> Path:
    return HERE / f"{case}.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            values = losses(case, f"{tmp}/out", f"{tmp}/cache")
            import torch

            path(case).write_text(json.dumps({"case": case, "torch": torch.__version__, "losses": values},
                                             indent=1) + "\n")
            print(f"wrote {path(case)} ({len(values)} steps)", file=sys.stderr)


if __name__ == "__main__":
    main()
