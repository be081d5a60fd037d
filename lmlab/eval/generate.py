"""Autoregressive sampling from a Transformer, with or without the per-layer caches.

Design choices and guarantees:
- ``filtered_probs`` turns logits into the exact sampling distribution: temperature, then top-k (the
  k largest logits; ties at the k-th value are kept), then top-p (the smallest prefix of tokens by
  descending probability whose mass reaches p; the most likely token is always kept), renormalised.
  ``temperature=0`` or ``top_k=1`` is greedy (argmax; ties go to the lowest id).
- ``generate`` yields token ids one at a time as they are produced (so callers can stream), and stops
  after ``max_new_tokens`` or at ``stop_id``. With ``use_cache`` it prefills the prompt once and then
  feeds one token per step through the layers' caches; without, it re-runs the whole sequence every
  step. No context is cropped, so both paths see the same tokens and, greedy, give the same output
  (tests/test_attention_generate.py); sequences longer than ``model.seq_len`` therefore need a
  position encoding that extrapolates (a learned table raises).
- Randomness comes only from the ``torch.Generator`` passed in (or one seeded from ``seed``), so a
  seed reproduces a sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Optional

import torch


def filtered_probs(
    logits: torch.Tensor,  # (B, V)
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
) -> torch.Tensor:  # (B, V), rows sum to 1
    logits = logits.float()
    if temperature <= 0 or top_k == 1:
        return torch.zeros_like(logits).scatter_(-1, logits.argmax(-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(-1)
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        mass_before = sorted_p.cumsum(-1) - sorted_p  # mass of strictly more likely tokens
        keep_sorted = mass_before < top_p  # the first token always has mass_before = 0
        keep = torch.zeros_like(keep_sorted).scatter_(-1, order, keep_sorted)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample_next(logits: torch.Tensor, temperature=1.0, top_k=None, top_p=None, generator=None) -> torch.Tensor:
    """(B, V) logits -> (B,) sampled ids."""
    if temperature <= 0 or top_k == 1:
        return logits.argmax(-1)
    probs = filtered_probs(logits, temperature, top_k, top_p)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model,
    prompt: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    use_cache: bool = True,
    stop_id: Optional[int] = None,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids continuing ``prompt`` (a non-empty id list)."""
    if not prompt:
        raise ValueError("generate needs at least one prompt token (e.g. the end-of-text id)")
    device = next(model.parameters()).device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    caches = model.new_caches() if use_cache else None
    logits = model(ids, caches=caches)[:, -1]  # (1, V): prefill
    for i in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (1,)
        tok = int(nxt[0])
        if stop_id is not None and tok == stop_id:
            return
        yield tok
        if i == max_new_tokens - 1:
            return
        if use_cache:
            logits = model(nxt[:, None], caches=caches)[:, -1]
        else:
            ids = torch.cat((ids, nxt[:, None]), dim=1)
            logits = model(ids)[:, -1]
