"""Print what a configuration costs: parameters, KV cache per token, FLOPs per token.

    python -m lmlab inspect attention=mla model=micro [pos=... any training override] [context=4096]

Every key that is not this command's is a training override: the config is composed from conf/ as
``train.py`` composes it and validated (``lmlab.cli.compose_run``; a wrong group option or key names
the closest valid ones); the model is built on the meta device (no memory, no init time) with
``tokenizer.vocab_size`` tokens.

The formulas belong to the attention classes, not to this command: ``cache_elems_per_token`` /
``cache_formula`` for the cache, ``attention_flops(context)`` for the attention matmuls (prefill and
decode forms; MLA's absorbed decode and VQ's constant-cost blocks report their own), and
``Transformer.flops_per_token`` for the whole forward pass (one multiply-add = 2 FLOPs):
- *linear*: 2 × the weights of every ``nn.Linear`` (q/k/v/o and latent projections, MLP, LM head);
- *attention*: query-key scores and probability-value products of one token attending ``context`` keys;
- not counted: norms, softmax, activations, rotary/bias, embedding lookup. Training ≈ 3 × forward.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lmlab.cli import arg, parse_with_run

USAGE = "python -m lmlab inspect [context=N] [training overrides: attention=mla model=micro ...]"


@dataclass
class Args:
    context: Optional[int] = arg(None, "keys attended per token for the FLOP and cache figures (null: model.seq_len)")

    def check(self) -> list[str]:
        if self.context is not None and self.context <= 0:
            return [f"context={self.context} must be positive"]
        return []


def report(run, context: Optional[int] = None) -> str:
    from lmlab.model.transformer import build_model

    V = run.tokenizer.vocab_size
    with torch.device("meta"):
        model = build_model(run, V)
    L = context or run.model.seq_len
    m, blk = run.model, model.blocks[0]
    attn = blk.attn
    n_attn = sum(p.numel() for p in attn.parameters())
    n_mlp = sum(p.numel() for p in blk.mlp.parameters())
    n_emb = model.tok_emb.weight.numel()
    lines = [
        f"attention={run.attention.name} pos={run.pos.name}  d_model={m.d_model} n_layer={m.n_layer} "
        f"n_head={m.n_head} head_dim={m.head_dim} seq_len={m.seq_len} vocab_size={V}",
        f"parameters: {model.n_params():,} total; embedding {n_emb:,}"
        f" ({'tied with' if m.tie_embeddings else 'plus'} the LM head); per layer: attention {n_attn:,},"
        f" mlp {n_mlp:,}",
    ]
    per_layer = attn.cache_elems_per_token()
    total = model.cache_elems_per_token()
    formula = attn.cache_formula()
    lines.append(
        f"KV cache per token: {per_layer:,} elems per layer" + (f" ({formula})" if formula else "")
        + f"; {total:,} over {m.n_layer} layers = {4 * total:,} B fp32 / {2 * total:,} B bf16"
        + f"; at context {L}: {4 * total * L / 2**20:.2f} MiB fp32 per sequence"
    )
    state = sum(b.attn.cache_state_elems() for b in model.blocks)
    if state:
        lines.append(
            f"constant decode state: {attn.cache_state_elems():,} elems per layer, {state:,} in all"
            f" = {4 * state / 2**20:.2f} MiB fp32 per sequence, at any context"
        )
    lin = sum(2 * mod.weight.numel() for mod in model.modules() if isinstance(mod, nn.Linear))
    head = 2 * model.lm_head.weight.numel()
    pre, dec = model.flops_per_token(L, "prefill"), model.flops_per_token(L, "decode")
    lines += [
        f"FLOPs per token (forward, matmuls; context L={L}):",
        f"  linear layers  {lin:,}  (2 × Linear weights; LM head {head:,})",
        f"  attention      {pre - lin:,} prefill/training form, {dec - lin:,} decode form",
        f"  total          {pre:,} prefill, {dec:,} decode; training ≈ 3 × {pre:,}",
        "  not counted: norms, softmax, activations, rotary/bias, embedding lookup",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> str:
    p, run = parse_with_run("inspect", Args, sys.argv[1:] if argv is None else argv)
    text = report(run, p.args.context)
    print(text)
    return text
