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
- ``decode`` is the one decoding loop of lmlab: plain generation (``generate``), healed generation
  (``lmlab.eval.healing.generate``, through ``generate``'s ``constrain``/``sample`` hooks) and the
  digits image sampler (``ImageTextModel.generate_images``, feeding patch embeddings) all run on it,
  so all of them use the KV cache. ``IncrementalForward`` is its model call: with the cache it feeds
  only the new slots; without, the whole sequence so far (the reference the cached path must equal).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


class IncrementalForward:
    """Feed a growing sequence through a ``Transformer`` and return the outputs at its last slot.

    Each call appends new slots, given as ids ``idx`` (B, t) or input vectors ``embeds`` (B, t, C)
    (one kind per instance), with optional explicit ``positions`` (B, t, A). With ``use_cache`` only the
    new slots go through the layers (their caches hold the rest); without, the whole sequence so far
    is re-run, optionally cropped to its last ``max_context`` slots. ``model`` may also be any callable
    ``ids (B, T) -> logits (B, T, V)`` without caches (e.g. a lookup-table LM in tests); then
    ``use_cache`` must be false and only ``idx`` is accepted.
    """

    def __init__(self, model, use_cache: bool = True, hidden: bool = False, max_context: Optional[int] = None):
        if use_cache and not hasattr(model, "new_caches"):
            raise ValueError(f"{type(model).__name__} has no caches: decode it with use_cache=False")
        if use_cache and max_context is not None:
            raise ValueError("max_context crops the context, which a cache cannot: use use_cache=False")
        self.model, self.hidden, self.max_context = model, hidden, max_context
        self.caches = model.new_caches() if use_cache else None
        self.seen: dict[str, Optional[torch.Tensor]] = {"idx": None, "embeds": None, "positions": None}

    def __call__(self, idx=None, embeds=None, positions=None):
        """-> logits (B, V) at the last slot, or (logits, hidden (B, C)) when built with ``hidden``."""
        new = {"idx": idx, "embeds": embeds, "positions": positions}
        if self.caches is None:  # the reference path: everything so far, every time
            for k, v in new.items():
                if v is not None:
                    self.seen[k] = v if self.seen[k] is None else torch.cat((self.seen[k], v), dim=1)
            new = {k: v if v is None or self.max_context is None else v[:, -self.max_context:]
                   for k, v in self.seen.items()}
        kwargs = {k: v for k, v in new.items() if v is not None}
        if self.caches is not None:
            kwargs["caches"] = self.caches
        if self.hidden:
            logits, h = self.model(**kwargs, return_hidden=True)
            return logits[:, -1], h[:, -1]
        if not hasattr(self.model, "new_caches"):  # a bare ids -> logits callable
            return self.model(kwargs["idx"])[:, -1]
        return self.model(**kwargs)[:, -1]


@torch.no_grad()
def decode(forward: IncrementalForward, prefix: dict, n_steps: int,
           choose: Callable, feed: Callable) -> Iterator:
    """The decoding loop: one call on ``prefix`` (prefill), then up to ``n_steps`` items.

    Each step ``choose(out)`` turns the last slot's outputs into the next item (a token id, a patch,
    ...; ``None`` stops), which is yielded and then fed back as ``forward(**feed(item))``. The last
    item is not fed back (nothing would read its output).
    """
    out = forward(**prefix)
    for i in range(n_steps):
        item = choose(out)
        if item is None:
            return
        yield item
        if i == n_steps - 1:
            return
        out = forward(**feed(item))


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
    constrain: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    sample: Optional[Callable[[torch.Tensor], int]] = None,
    max_context: Optional[int] = None,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids continuing ``prompt`` (a non-empty id list).

    Hooks (healing uses both): ``constrain(logits (V,)) -> logits`` masks the next token's logits
    (e.g. -inf outside an allowed set); ``sample(logits (V,)) -> id`` replaces the temperature/top-k/
    top-p draw. ``max_context`` (uncached only) feeds only the last that many tokens.
    """
    if not prompt:
        raise ValueError("generate needs at least one prompt token (e.g. the end-of-text id)")
    params = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    device = params.device if params is not None else torch.device("cpu")
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)

    def choose(logits: torch.Tensor) -> Optional[int]:  # (1, V) -> the next id
        row = logits[0]
        if constrain is not None:
            row = constrain(row)
        if sample is not None:
            tok = int(sample(row))
        else:
            tok = int(sample_next(row[None], temperature, top_k, top_p, generator)[0])
        return None if stop_id is not None and tok == stop_id else tok

    fwd = IncrementalForward(model, use_cache, max_context=max_context)
    ids = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    yield from decode(fwd, {"idx": ids}, max_new_tokens, choose,
                      lambda tok: {"idx": torch.tensor([[tok]], dtype=torch.long, device=device)})
