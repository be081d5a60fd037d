"""Downstream evaluation of a checkpoint through lm-eval-harness (``lmlab.eval.downstream``).

    python -m lmlab eval ckpt=outputs/RUN tasks=lmlab_nextline [limit=100] [engine=auto|lm_eval|direct]

``lmlab_nextline`` (the true next line of a validation document among four) is built from the run's
own validation text, so the command works offline out of the box; any other lm-eval task name needs
``pip install 'lmlab[eval]'`` (and the task's data, i.e. the network). Results go to ``eval.json`` in
the run directory.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Literal, Optional

from lmlab.cli import arg, parse

USAGE = "python -m lmlab eval ckpt=outputs/RUN tasks=lmlab_nextline"


@dataclass
class Args:
    ckpt: str = arg(None, "checkpoint file or run directory", required=True)
    tasks: str = arg("lmlab_nextline", "comma-separated lm-eval task names")
    limit: Optional[int] = arg(None, "at most this many examples per task")
    n_docs: int = arg(200, "questions built for lmlab_nextline")
    num_fewshot: Optional[int] = arg(None, "few-shot examples (lm-eval)")
    engine: Literal["auto", "lm_eval", "direct"] = arg("auto", "auto: lm-eval when installed; direct: lmlab_nextline only")
    out_dir: Optional[str] = arg(None, "where eval.json goes (null: the run directory)")

    def check(self) -> list[str]:
        p = []
        if self.limit is not None and self.limit <= 0:
            p.append(f"limit={self.limit} must be positive")
        if self.n_docs <= 0:
            p.append(f"n_docs={self.n_docs} must be positive")
        return p


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse("eval", Args, sys.argv[1:] if argv is None else argv).args
    from lmlab.cli import resolve_ckpt
    from lmlab.eval.downstream import evaluate

    engine = {"auto": None, "lm_eval": True, "direct": False}[args.engine]
    res = evaluate(str(resolve_ckpt(args.ckpt)), args.tasks, limit=args.limit, n_docs=args.n_docs,
                   out_dir=args.out_dir, use_lm_eval=engine, num_fewshot=args.num_fewshot)
    print(json.dumps(res["results"], indent=1))
    return res
