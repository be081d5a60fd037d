"""Token healing (SPEC §5, remedy B): back off the prompt's last k tokens and let the model re-spell them.

A prompt that ends inside what training data would have merged into one token ("...白云" before
"机场") leaves the model at a token boundary it has rarely seen. Healing removes the last k tokens
(their bytes ``r``), calls the model once on the shorter context, and restricts the next token to
those consistent with ``r``:

- ``k = 1`` (SPEC §5 exactly): candidates are the tokens whose bytes *extend* ``r`` (``r`` itself
  included, so the unchanged prompt stays possible); the model's distribution is renormalised over
  them, one token is drawn, and ordinary decoding continues. One model call.
- ``k > 1`` (SPEC §5 "proposed lmlab extension", own design, not from S1): byte-constrained decoding.
  While removed bytes ``r`` remain, a token is allowed iff its bytes are a non-empty prefix of ``r``
  or extend ``r``; each step renormalises over the allowed tokens; once ``r`` is consumed the
  constraint is lifted. ``k = 1`` is *not* this rule with one token: S1's rule admits extensions
  only, and so do we.

Design choices and guarantees:
- The candidate search runs on bytes (``VocabIndex``: the vocabulary's byte strings sorted, so all
  tokens extending ``r`` form one contiguous range found by bisection), because byte-level tokens
  may split characters. Tokens whose bytes are empty (control/special tokens) are never candidates.
- The healed output always starts with the prompt's bytes exactly: the context keeps the first
  ``n - k`` prompt tokens and every constrained step emits bytes consistent with ``r``.
- Where no token strictly extends ``r`` (k = 1), or no token strictly extends any byte-suffix of
  ``r`` (k > 1; such a token is what could carry new bytes across the cut), healing changes nothing:
  the prompt ids are returned untouched, so generation is exactly plain generation.
- ``k`` is capped at ``len(ids) - 1``: the model needs at least one context token.
- Greedy decoding under healing takes the argmax over the allowed set (renormalising does not move it).

Use from a generation loop (any model callable ``ids (B, T) -> logits (B, T, V)``)::

    state = Healer(index, k).start(prompt_ids)      # state.ids is the (shortened) context
    while ...:
        logits = state.constrain(model_last_logits(state.ids))   # -inf outside the allowed set
        t = sample(logits); state.advance(t)        # appends t, consumes removed bytes
    text = tokenizer.decode(state.ids)              # starts with the prompt
"""

from __future__ import annotations

import bisect
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

_INDEX_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
LM = Callable[[torch.Tensor], torch.Tensor]  # ids (B, T) LongTensor -> logits (B, T, V)


class VocabIndex:
    """Byte-prefix search over a vocabulary (token id -> bytes), built once per tokenizer."""

    def __init__(self, table: Sequence[bytes]):
        self.table = [bytes(b) for b in table]
        self.vocab_size = len(self.table)
        order = sorted((b, i) for i, b in enumerate(self.table) if b)
        self._sorted = [b for b, _ in order]
        self._ids = np.array([i for _, i in order], dtype=np.int64)
        self.by_bytes: dict[bytes, list[int]] = {}
        for b, i in order:
            self.by_bytes.setdefault(b, []).append(i)
        self.max_len = max((len(b) for b in self._sorted), default=0)
        self.lengths = np.array([len(b) for b in self.table], dtype=np.int64)

    @classmethod
    def of(cls, tokenizer) -> VocabIndex:
        """The index of a tokenizer's vocabulary, built once per tokenizer object."""
        try:
            return _INDEX_CACHE[tokenizer]
        except (KeyError, TypeError):
            pass
        idx = cls(tokenizer.bytes_table())
        try:
            _INDEX_CACHE[tokenizer] = idx
        except TypeError:  # not weak-referenceable/hashable: no caching
            pass
        return idx

    def extending(self, r: bytes) -> np.ndarray:
        """Ids of tokens whose bytes start with ``r`` (``r`` itself included); r=b'' gives all."""
        lo = bisect.bisect_left(self._sorted, r)
        upper = _prefix_upper_bound(r)  # strings with prefix r sort in [r, upper)
        hi = len(self._sorted) if upper is None else bisect.bisect_left(self._sorted, upper, lo)
        return self._ids[lo:hi]

    def strictly_extends(self, r: bytes) -> bool:
        lo = bisect.bisect_left(self._sorted, r)
        while lo < len(self._sorted) and self._sorted[lo] == r:
            lo += 1
        return lo < len(self._sorted) and self._sorted[lo].startswith(r)

    def prefixes(self, r: bytes, proper: bool = True) -> list[tuple[int, list[int]]]:
        """(length, ids) for every non-empty prefix of ``r`` that is a token (shorter than r if proper)."""
        top = min(len(r) - 1 if proper else len(r), self.max_len)
        return [(n, self.by_bytes[r[:n]]) for n in range(1, top + 1) if r[:n] in self.by_bytes]

    def allowed(self, r: bytes, k_mode: bool) -> np.ndarray:
        """The constrained step's allowed ids: extensions of r, plus (k > 1 mode) proper prefixes of r."""
        ext = self.extending(r)
        if not k_mode:
            return ext
        pre = [i for _, ids in self.prefixes(r) for i in ids]
        return np.concatenate([ext, np.array(pre, dtype=np.int64)]) if pre else ext


def _prefix_upper_bound(r: bytes) -> Optional[bytes]:
    """Smallest byte string above every string starting with r; None if there is none (r = 0xff...)."""
    r = bytearray(r)
    while r and r[-1] == 0xFF:
        r.pop()
    if not r:
        return None
    r[-1] += 1
    return bytes(r)


# ---------------------------------------------------------------------------------------------
# Back-off and the constrained-decoding state.
# ---------------------------------------------------------------------------------------------


@dataclass
class HealState:
    """Where a healed generation stands: ids so far, bytes still to re-spell, and the mode."""

    ids: list[int]
    removed: bytes = b""  # bytes of the backed-off tokens
    remaining: bytes = b""  # removed bytes not yet re-emitted ("" = unconstrained)
    k: int = 0  # tokens backed off (0 = no healing)
    index: Optional[VocabIndex] = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        return bool(self.remaining)

    def allowed(self) -> Optional[np.ndarray]:
        return self.index.allowed(self.remaining, self.k > 1) if self.active else None

    def constrain(self, logits: torch.Tensor) -> torch.Tensor:
        """Last-position logits (V,) -> the same with -inf outside the allowed set (if constrained)."""
        if not self.active:
            return logits
        mask = torch.full_like(logits, float("-inf"))
        idx = torch.as_tensor(self.allowed(), device=logits.device)
        mask[idx] = 0.0
        return logits + mask

    def advance(self, token: int) -> None:
        b = self.index.table[token]
        if self.active:
            if b.startswith(self.remaining):
                self.remaining = b""
            elif self.k > 1 and b and self.remaining.startswith(b) and len(b) < len(self.remaining):
                self.remaining = self.remaining[len(b):]
            else:
                raise ValueError(f"token {token} ({b!r}) violates the healing constraint {self.remaining!r}")
        self.ids.append(int(token))


class Healer:
    """Back off ``k`` tokens of a prompt (SPEC §5); see the module docstring for the rules."""

    def __init__(self, index: VocabIndex, k: int = 1):
        if k < 0:
            raise ValueError(f"heal k={k} must be >= 0")
        self.index, self.k = index, k

    def would_change(self, removed: bytes, k: int) -> bool:
        if k == 1:
            return self.index.strictly_extends(removed)
        return any(self.index.strictly_extends(removed[i:]) for i in range(len(removed)))

    def start(self, prompt_ids: Sequence[int]) -> HealState:
        ids = [int(i) for i in prompt_ids]
        k = min(self.k, len(ids) - 1)
        if k <= 0:
            return HealState(ids, index=self.index)
        removed = b"".join(self.index.table[i] for i in ids[-k:])
        if not removed or not self.would_change(removed, k):
            return HealState(ids, index=self.index)
        return HealState(ids[:-k], removed, removed, k, self.index)


# ---------------------------------------------------------------------------------------------
# Convenience: one healed first step, and healed generation on the shared decoding loop.
# ---------------------------------------------------------------------------------------------


def last_logits(lm: LM, ids: Sequence[int]) -> torch.Tensor:
    with torch.no_grad():
        x = torch.tensor([list(ids)], dtype=torch.long)
        return lm(x)[0, -1].float()


def candidate_distribution(lm: LM, state: HealState) -> tuple[np.ndarray, np.ndarray]:
    """(candidate ids, renormalised probabilities) of the first healed step: one model call."""
    logits = last_logits(lm, state.ids)
    cands = state.allowed()
    if cands is None:
        cands = np.arange(logits.shape[-1])
    lp = torch.log_softmax(logits.double(), -1)[torch.as_tensor(cands)]
    return cands, torch.softmax(lp, -1).numpy()


def heal_first_step(lm: LM, index: VocabIndex, prompt_ids: Sequence[int], k: int = 1,
                    rng: Optional[np.random.Generator] = None) -> HealState:
    """SPEC §5 ``heal_first_step``: back off k tokens, ONE model call, draw from the renormalised
    candidates (argmax when rng is None). Returns the state after that token (constraint possibly
    still active when k > 1)."""
    state = Healer(index, k).start(prompt_ids)
    cands, p = candidate_distribution(lm, state)
    t = cands[int(np.argmax(p))] if rng is None else cands[rng.choice(len(cands), p=p)]
    state.advance(int(t))
    return state


def generate(lm, index: VocabIndex, prompt_ids: Sequence[int], max_new_tokens: int, k: int = 0,
             rng: Optional[np.random.Generator] = None, temperature: float = 1.0,
             stop_ids: Sequence[int] = (), max_context: Optional[int] = None,
             use_cache: Optional[bool] = None) -> HealState:
    """Healed decoding (greedy when rng is None) on lmlab's one loop, ``lmlab.eval.generate.generate``.

    ``lm`` is a ``Transformer`` (decoded with its KV cache by default) or any callable
    ``ids (B, T) -> logits (B, T, V)`` (decoded without a cache). ``use_cache=None`` means: cached
    when ``lm`` has caches and ``max_context`` is not set. The healing constraint enters through the
    loop's ``constrain`` hook and the draw through its ``sample`` hook, so cached and uncached decoding
    make the same draws from ``rng``. ``max_new_tokens`` counts tokens after the shortened context, so
    healing's re-spelling of the removed bytes is included; a token in ``stop_ids`` is appended and
    ends decoding. Returns the final state; ``decode_bytes(state.ids)`` starts with the prompt.
    """
    from lmlab.eval.generate import generate as decode_tokens

    state = Healer(index, k).start(prompt_ids)
    if use_cache is None:
        use_cache = hasattr(lm, "new_caches") and max_context is None

    def sample(logits: torch.Tensor) -> int:
        if rng is None:
            return int(torch.argmax(logits))
        p = torch.softmax(logits.double() / temperature, -1).numpy()
        return int(rng.choice(len(p), p=p / p.sum()))

    for t in decode_tokens(lm, list(state.ids), max_new_tokens, use_cache=use_cache,
                           constrain=lambda logits: state.constrain(logits.float()), sample=sample,
                           max_context=max_context):
        state.advance(t)
        if t in stop_ids:
            break
    return state
