"""Print what a configuration costs: parameters, KV cache per token, FLOPs per token.

    python -m lmlab.inspect attention=mla model=micro [pos=... any override] [--context 4096]

The config is composed from conf/ with Hydra's compose API and validated (``lmlab.config.compose``);
the model is built on the meta device (no memory, no init time) with ``tokenizer.vocab_size`` tokens.

What is counted (forward pass, per token; one multiply-add = 2 FLOPs):
- *linear*: 2 × the weights of every ``nn.Linear`` (q/k/v/o and latent projections, MLP, LM head);
  MLA's absorbed decode form swaps the key/value up-projection of the new token for two per-head
  absorption matmuls of the same size, so the figure holds for both forms.
- *attention*: query-key scores and probability-value products of one token attending ``context``
  keys (MHA/GQA/MQA: 4·h·d_k·L; MLA and VQ report their own, see ``attention_flops``).
- not counted: norms, softmax, activations, rotary/bias, embedding lookup. Training ≈ 3 × forward.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch
from torch import nn


def attention_flops(attn, context: int) -> dict[str, int]:
    if hasattr(attn, "attention_flops"):
        return attn.attention_flops(context)
    f = 4 * attn.n_head * attn.head_dim * context  # scores q·k and weighted values, every head
    return {"prefill": f, "decode": f}


def cache_formula(attn) -> str:
    name = attn.registry_name
    if name == "mla":
        return f"d_c + d_r = {attn.d_c} + {attn.d_r}"
    if hasattr(attn, "n_kv_head") and hasattr(attn, "head_dim"):
        return f"2·g·d_k = 2·{attn.n_kv_head}·{attn.head_dim}"
    return ""


def _split_args(argv: list[str]) -> tuple[list[str], Optional[int]]:
    overrides, context = [], None
    it = iter(argv)
    for a in it:
        if a.startswith("--context"):
            context = int(a.split("=", 1)[1] if "=" in a else next(it))
        else:
            overrides.append(a)
    return overrides, context


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
    formula = cache_formula(attn)
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
    fl = [attention_flops(b.attn, L) for b in model.blocks]
    pre, dec = sum(f["prefill"] for f in fl), sum(f["decode"] for f in fl)
    lines += [
        f"FLOPs per token (forward, matmuls; context L={L}):",
        f"  linear layers  {lin:,}  (2 × Linear weights; LM head {head:,})",
        f"  attention      {pre:,} prefill/training form, {dec:,} decode form",
        f"  total          {lin + pre:,} prefill, {lin + dec:,} decode; training ≈ 3 × {lin + pre:,}",
        "  not counted: norms, softmax, activations, rotary/bias, embedding lookup",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> str:
    from lmlab.config import compose

    overrides, context = _split_args(sys.argv[1:] if argv is None else argv)
    text = report(compose(overrides), context)
    print(text)
    return text


if __name__ == "__main__":
    main()
