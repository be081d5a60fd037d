"""Downstream evaluation through ``lm-eval-harness`` on the lmlab model itself, plus one offline task.

- ``LmlabLM``: an ``lm_eval`` model (``loglikelihood``, ``loglikelihood_rolling``, ``generate_until``)
  over an lmlab model and tokenizer. Log-likelihoods come from one full forward pass per request
  (context left-truncated to ``model.seq_len``); greedy generations use lmlab's KV cache
  (``lmlab.eval.generate``). A continuation is the tokens of ``context + continuation`` after the
  tokens of ``context`` (as lm-eval's HF model does), falling back to encoding it alone when the
  context's tokens are not a prefix; an empty context is conditioned on the EOS token, which
  separates documents in training. The methods also accept plain argument tuples, so the class
  works (and is tested) without ``lm_eval`` installed.
- ``lmlab_nextline``: a multiple-choice task built from the run's *validation* documents: given
  ``n_context`` lines, pick the true next line among ``n_choices`` (the others are lines drawn from
  other validation documents). Seeded, so every run on the same corpus gets the same questions;
  chance is 1/n_choices. Written at run time as a local lm-eval task (yaml + jsonl) in the run dir.
- ``evaluate(ckpt, tasks)`` runs the tasks and writes ``eval.json`` into the run directory.
  ``lmlab_nextline`` runs without lm-eval too (``nextline_accuracy``, the same numbers); any other
  task (hellaswag, arc_easy, ...) needs the ``[eval]`` extra and, for their datasets, the network
  or a warm HF datasets cache.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from lmlab.eval.generate import generate

try:  # the [eval] extra; without it LmlabLM is a plain class with the same methods
    from lm_eval.api.model import LM as _Base
except ImportError:  # pragma: no cover - depends on the environment
    _Base = object

NEXTLINE = "lmlab_nextline"


def _args(req):
    return req.args if hasattr(req, "args") else tuple(req)


class LmlabLM(_Base):
    """lm-eval model over an lmlab ``model`` (eval mode) and ``tokenizer``."""

    def __init__(self, model, tokenizer, seq_len: Optional[int] = None, max_gen_toks: int = 64):
        if _Base is not object:
            super().__init__()
        self.model = model.eval()
        self.tok = tokenizer
        self.seq_len = seq_len or model.cfg.seq_len
        self.max_gen_toks = max_gen_toks
        self.device_ = next(model.parameters()).device

    # -- helpers -------------------------------------------------------------------------------

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        ctx = self.tok.encode(context) if context else []
        whole = self.tok.encode(context + continuation)
        cont = whole[len(ctx):] if whole[: len(ctx)] == ctx else self.tok.encode(continuation)
        return ctx or [self.tok.eos_id], cont

    @torch.no_grad()
    def _score(self, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
        """Sum of log p(cont | ctx) and whether every cont token is the argmax."""
        ids = (ctx + cont)[-(self.seq_len + 1):]  # the last token is only a target
        x = torch.tensor([ids[:-1]], device=self.device_)
        logp = F.log_softmax(self.model(x)[0].float(), dim=-1)  # (T, V)
        n = min(len(cont), len(ids) - 1)  # a continuation longer than seq_len keeps its tail
        rows, targets = logp[-n:], torch.tensor(ids[-n:], device=self.device_)
        ll = rows.gather(-1, targets[:, None]).sum().item()
        return ll, bool((rows.argmax(-1) == targets).all())

    # -- lm-eval API ---------------------------------------------------------------------------

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for req in requests:
            context, continuation = _args(req)[:2]
            ctx, cont = self._split(context, continuation)
            out.append(self._score(ctx, cont) if cont else (0.0, True))
        return out

    @torch.no_grad()
    def loglikelihood_rolling(self, requests) -> list[float]:
        """Log-likelihood of whole texts (from the EOS token), in windows of at most seq_len inputs."""
        out = []
        for req in requests:
            tokens = [self.tok.eos_id] + self.tok.encode(_args(req)[0])
            N, W, total = len(tokens), max(1, self.seq_len // 2), 0.0
            for start in range(1, N, W):  # targets tokens[start:end], each seeing <= seq_len inputs
                end = min(start + W, N)
                a = max(0, end - 1 - self.seq_len)
                x = torch.tensor([tokens[a: end - 1]], device=self.device_)
                logp = F.log_softmax(self.model(x)[0].float(), dim=-1)[start - 1 - a:]
                tgt = torch.tensor(tokens[start:end], device=self.device_)
                total += logp.gather(-1, tgt[:, None]).sum().item()
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = _args(req)[:2]
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
            ids = self.tok.encode(context) or [self.tok.eos_id]
            ids = ids[-max(1, self.seq_len - max_new):]  # learned positions stop at seq_len
            buf = b""
            for t in generate(self.model, ids, max_new, temperature=0.0, stop_id=self.tok.eos_id):
                buf += self.tok.piece_bytes(t)
                text = buf.decode("utf-8", errors="replace")
                if any(u and u in text for u in until):
                    break
            text = buf.decode("utf-8", errors="replace")
            cut = min([text.index(u) for u in until if u and u in text], default=len(text))
            out.append(text[:cut])
        return out


# ------------------------------------------------------------------------------------------------
# the offline task
# ------------------------------------------------------------------------------------------------


def nextline_docs(texts: list[str], n: int = 200, n_context: int = 4, n_choices: int = 4,
                  seed: int = 0, min_chars: int = 12) -> list[dict]:
    """Questions {context, choices, label} from documents ``texts`` (seeded, reproducible)."""
    rng = random.Random(seed)
    docs_lines = [[ln for ln in t.split("\n") if len(ln.strip()) >= min_chars] for t in texts]
    pool = [(d, ln) for d, lines in enumerate(docs_lines) for ln in lines]
    spots = [(d, i) for d, lines in enumerate(docs_lines) for i in range(n_context, len(lines))]
    if len(docs_lines) < 2 or not spots:
        from lmlab.data.sources.base import DataError

        raise DataError(f"{NEXTLINE}: need at least 2 validation documents with > {n_context} lines "
                        f"(this run's validation split has {len(docs_lines)})")
    rng.shuffle(spots)
    out = []
    for d, i in spots[:n]:
        lines = docs_lines[d]
        true = lines[i]
        distractors: list[str] = []
        while len(distractors) < n_choices - 1:
            od, ln = pool[rng.randrange(len(pool))]
            if od != d and ln != true and ln not in distractors:
                distractors.append(ln)
        label = rng.randrange(n_choices)
        choices = distractors[:label] + [true] + distractors[label:]
        out.append({"context": "\n".join(lines[i - n_context: i]) + "\n", "choices": choices, "label": label})
    return out


def write_nextline_task(docs: list[dict], task_dir: str) -> Path:
    """A local lm-eval task (``lmlab_nextline.yaml`` + ``nextline.jsonl``) in ``task_dir``."""
    d = Path(task_dir)
    d.mkdir(parents=True, exist_ok=True)
    data = d / "nextline.jsonl"
    data.write_text("".join(json.dumps(x) + "\n" for x in docs))
    (d / f"{NEXTLINE}.yaml").write_text(
        f"task: {NEXTLINE}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{choices}}"\n'
        'doc_to_target: "{{label}}"\n'
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n"
    )
    return d


def nextline_accuracy(lm: LmlabLM, docs: list[dict]) -> dict:
    """acc (sum log-likelihood) and acc_norm (per byte, lm-eval's definition) without lm-eval."""
    acc = acc_norm = 0
    for doc in docs:
        lls = [ll for ll, _ in lm.loglikelihood([(doc["context"], c) for c in doc["choices"]])]
        acc += int(max(range(len(lls)), key=lls.__getitem__) == doc["label"])
        norm = [ll / len(c) for ll, c in zip(lls, doc["choices"])]  # lm-eval normalises by characters
        acc_norm += int(max(range(len(norm)), key=norm.__getitem__) == doc["label"])
    n = len(docs)
    return {"acc": acc / n, "acc_norm": acc_norm / n, "n": n, "chance": 1 / len(docs[0]["choices"])}


def _run_dir(ckpt: Path) -> Path:
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def evaluate(ckpt: str, tasks: str | tuple[str, ...] | list[str] = (NEXTLINE,), limit: Optional[int] = None,
             n_docs: int = 200, out_dir: Optional[str] = None, use_lm_eval: Optional[bool] = None,
             num_fewshot: Optional[int] = None) -> dict:
    """Evaluate an lmlab checkpoint on ``tasks``; write and return ``eval.json`` in the run dir.

    ``lmlab_nextline`` is built from the run's validation documents (``n_docs`` questions) into
    ``<run dir>/eval_tasks/``. ``use_lm_eval``: None = use lm-eval when installed (required for any
    other task); False = the direct computation (lmlab_nextline only). CLI: ``python -m lmlab eval
    ckpt=... tasks=...`` (wired in lmlab/cli).
    """
    from lmlab.interop.export import load_lmlab

    path = Path(ckpt)
    model, tokenizer, run = load_lmlab(str(path))
    if tokenizer is None:
        raise ValueError(f"{ckpt}: an image-text run has no text tokenizer to evaluate with")
    run_dir = Path(out_dir) if out_dir else _run_dir(path)
    lm = LmlabLM(model, tokenizer)
    tasks = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)  # "a,b" from a CLI
    have_lm_eval = _Base is not object
    if use_lm_eval is None:
        use_lm_eval = have_lm_eval
    if (use_lm_eval or set(tasks) != {NEXTLINE}) and not have_lm_eval:
        raise ValueError(f"tasks={','.join(tasks)} need lm-eval: pip install 'lmlab[eval]'")
    docs = None
    if NEXTLINE in tasks:
        from lmlab.data.corpus import load_corpus

        docs = nextline_docs(list(load_corpus(run).val["text"]), n=n_docs)
        write_nextline_task(docs, str(run_dir / "eval_tasks"))
    result = {"ckpt": str(path), "tasks": tasks, "limit": limit}
    if use_lm_eval:
        import lm_eval
        from lm_eval.tasks import TaskManager

        tm = TaskManager(include_path=str(run_dir / "eval_tasks")) if docs is not None else TaskManager()
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit,
                                      num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=0)
        result["results"] = _clean(res["results"])
        result["engine"] = "lm-eval " + getattr(lm_eval, "__version__", "")
    else:
        result["results"] = {NEXTLINE: nextline_accuracy(lm, docs[:limit] if limit else docs)}
        result["engine"] = "lmlab (direct)"
    (run_dir / "eval.json").write_text(json.dumps(result, indent=1))
    return result


def _clean(obj):
    """JSON-safe copy (lm-eval results hold NaN stderr placeholders and numpy scalars)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):
        return obj.item()
    return obj
