"""Export a checkpoint as a Hugging Face ``transformers`` directory (model, tokenizer, model card).

    python -m lmlab export ckpt=outputs/RUN out=exported/RUN

``ckpt`` is a checkpoint file or a run directory. The directory loads with
``AutoModelForCausalLM.from_pretrained(out)`` and ``AutoTokenizer.from_pretrained(out)``; which
family each lmlab configuration maps to, and which are refused (naming the part no peer architecture
has), is in ``lmlab.interop`` and ``docs/interop.md``. Nothing is written when the export is refused.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

from lmlab.cli import arg, parse

USAGE = "python -m lmlab export ckpt=outputs/RUN out=DIR"


@dataclass
class Args:
    ckpt: str = arg(None, "checkpoint file or run directory", required=True)
    out: str = arg(None, "directory to write (replaced if it exists)", required=True)

    def check(self) -> list[str]:
        return []


def main(argv: Optional[list[str]] = None) -> dict:
    args = parse("export", Args, sys.argv[1:] if argv is None else argv).args
    from lmlab.interop.export import export

    res = export(args.ckpt, args.out)
    print(f"exported as {res['family']} to {res['out_dir']}", file=sys.stderr)
    return res
