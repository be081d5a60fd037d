"""Unigram segmentation over a byte-level lattice: the model arrays and a pure-Python reference.

This module is the *reference*: readable, slow, and what the tests hold the compiled path
(``lattice_fast``) equal to, sample for sample. Both walk the same lattice in the same order.

The lattice (SPEC §1). Text is a UTF-8 byte string. An edge (a, b) covers bytes a..b-1 and carries a
score (log-probability) and either a piece id or the *fallback* marker -1:

- piece edges: every vocabulary piece that matches at a start position a (found by prefix search in a
  byte trie, shorter pieces first);
- start positions: with ``char_starts=True`` (SentencePiece models) edges begin only at UTF-8 character
  starts, as in SentencePiece, whose lattice is built on characters; with ``char_starts=False``
  (BytePiece models) every byte is a start;
- the fallback edge: at a start whose character (one byte when ``char_starts=False``) has no piece of
  exactly its length, one edge spans that character with score ``unk_score``, and it emits the
  character's bytes as byte pieces (``byte_ids``). This is SentencePiece's unknown node (score
  min_score - 10) followed by byte fallback, so byte pieces enter the lattice *only* as the expansion of
  an unknown character, as one edge with one score: the sampled distributions match SentencePiece's,
  and a sample never splits a character that has a piece. A character without a piece always comes
  out as its bytes (e.g. an unseen Chinese character as three byte pieces), in every mode.
  Every character has an outgoing edge, so every text has a path.

Edge order. Edges are produced by increasing start a, then increasing length. An edge from a reads the
DP value at a, which is final by then (all edges into a start before a). At each end b, candidates
therefore arrive by increasing start, i.e. longer pieces first -- the order SPEC §1 requires and the
one SentencePiece's Viterbi uses, so "the earliest candidate wins a tie" matches it.

Modes (one left-to-right pass each, O(edges)):
- ``viterbi`` (SPEC §1): deterministic argmax that reproduces SentencePiece's encoder: path scores
  are summed in float32 (``best[b] = float32(best[a] + score)``) and a tie keeps the earliest
  candidate (strict ``>``). Equal-score segmentations are common (runs of spaces: 4+8 vs 8+4) and
  float32 rounding then decides, so precision and order both matter: with float64 sums the ids differ
  from SentencePiece 0.2.x on 224 of 57,021 held-out lines of Python source; with float32 on none (and
  on none of 300 5000-character chunks). Limit (measured with hand-built models): once path scores pass
  about -2**16 (tens of thousands of characters in one ``encode`` call) SentencePiece's compiled encoder
  resolves score differences finer than float32 can, so on such long texts a near-tie can go the other
  way (a few tokens in a long document; SentencePiece's own output then also differs from encoding the
  same text line by line).
- ``sample`` (SPEC §3, perfect sampling): logZ in float64, reservoir choice of the incoming edge;
  P(segmentation) = exp(alpha * score) / Z exactly (up to float64 rounding). alpha = 0 is uniform.
- ``sample_v1`` (SPEC §2, Su's original Viterbi Sampling): pairwise sigmoid duels; biased, kept for
  ablations.

Randomness. A sampled pass consumes one uniform per edge that is *not* the first into its end, drawn
from SplitMix64 seeded with one 64-bit integer; the tokenizer draws that integer from the caller's numpy
Generator, so a sample is a pure function of the Generator's state. The compiled path uses the same
generator and the same float64 formulas, so both paths give identical ids for identical seeds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Optional

import numpy as np

MODES = ("viterbi", "sample", "sample_v1")
MODE_CODE = {m: i for i, m in enumerate(MODES)}

# UTF-8 sequence length from the lead byte, as SentencePiece's string_util::OneCharLen
# (continuation and invalid bytes count as one).
ONE_CHAR_LEN = np.array([1] * 12 + [2, 2, 3, 4], dtype=np.int64)

_MASK64 = (1 << 64) - 1


# --------------------------------------------------------------------------------------------
# The model: a double-array byte trie over the pieces, plus scores and byte ids.
# --------------------------------------------------------------------------------------------


def build_double_array(keys: Sequence[bytes], values: Sequence[int]):
    """A double-array trie: from state s, byte c leads to t = base[s] + c iff check[t] == s.

    ``value[t]`` is the id of the key ending at state t, or -1. The root is state 0.
    Returns (base, check, value) as int32 arrays.
    """
    children: list[dict[int, int]] = [{}]
    terminal: list[int] = [-1]
    for key, val in zip(keys, values):
        if not key:
            raise ValueError("empty piece in the vocabulary")
        s = 0
        for c in key:
            nxt = children[s].get(c)
            if nxt is None:
                nxt = len(children)
                children[s][c] = nxt
                children.append({})
                terminal.append(-1)
            s = nxt
        if terminal[s] != -1 and terminal[s] != val:
            raise ValueError(f"piece {key!r} appears twice (ids {terminal[s]} and {val})")
        terminal[s] = val

    size = 512 + 2 * len(children)
    base: list[int] = [0] * size
    check: list[int] = [-1] * size
    value: list[int] = [-1] * size
    check[0] = -2  # the root occupies slot 0 (no state is -2, so no transition lands here)
    nxt = list(range(size + 1))  # nxt[i]: a slot >= i that may be free (union-find, path compression)

    def free_at_or_after(i: int) -> int:
        j = i
        while j < size and check[j] != -1:  # every slot in [i, j) is taken
            j = max(nxt[j], j + 1)
        while i < j:  # path compression: remember that [i, j) is taken
            i_next = nxt[i]
            nxt[i] = j
            i = max(i_next, i + 1)
        return j

    state_of = {0: 0}  # trie node -> array slot
    queue = [0]
    for node in queue:
        s = state_of[node]
        value[s] = terminal[node]
        labels = sorted(children[node])
        if not labels:
            continue
        lo, hi = labels[0], labels[-1]
        p = free_at_or_after(lo + 1)  # first slot for the smallest label (base >= 1)
        while True:
            b = p - lo
            if b + hi >= size:  # grow
                extra = size + 256
                base += [0] * extra
                check += [-1] * extra
                value += [-1] * extra
                nxt += list(range(size + 1, size + extra + 1))
                size += extra
            if all(check[b + c] == -1 for c in labels):
                break
            p = free_at_or_after(p + 1)
        base[s] = b
        for c in labels:
            check[b + c] = s
            state_of[children[node][c]] = b + c
            queue.append(children[node][c])
    used = max(i for i, c in enumerate(check) if c != -1) + 1
    return tuple(np.asarray(arr[:used], dtype=np.int32) for arr in (base, check, value))


@dataclass
class LatticeModel:
    """Everything a segmentation pass needs. ``byte_ids[c]`` is the id of the byte piece for byte c
    (-1 if absent). With ``exact32`` (SentencePiece) scores are float32 values and Viterbi sums in
    float32; without it (BytePiece) everything is float64."""

    pieces: dict[bytes, int]  # piece bytes -> id (the pieces that enter the lattice)
    scores: np.ndarray  # float64, indexed by id
    byte_ids: np.ndarray  # int32, 256
    unk_score: float
    char_starts: bool
    fallback: bool  # add the fallback edge (False: toy vocabularies; a text may then have no path)
    exact32: bool  # Viterbi in float32 (SentencePiece's arithmetic) rather than float64
    base: np.ndarray
    check: np.ndarray
    value: np.ndarray
    max_piece_bytes: int

    @classmethod
    def build(
        cls,
        pieces: dict[bytes, int],
        scores: Iterable[float],
        byte_ids: Optional[Sequence[int]] = None,
        unk_score: float = -1e4,
        char_starts: bool = True,
        fallback: bool = True,
        exact32: bool = True,
    ) -> LatticeModel:
        scores = np.asarray(list(scores), dtype=np.float64)
        if exact32:
            scores = scores.astype(np.float32).astype(np.float64)
            unk_score = float(np.float32(unk_score))
        if byte_ids is None:
            byte_ids = [-1] * 256
        byte_ids = np.asarray(byte_ids, dtype=np.int32)
        if byte_ids.shape != (256,):
            raise ValueError("byte_ids must have 256 entries")
        if fallback and (byte_ids < 0).any():
            raise ValueError("fallback edges emit byte pieces: byte_ids must cover all 256 bytes")
        if pieces and max(pieces.values()) >= len(scores):
            raise ValueError("a piece id has no score")
        keys = sorted(pieces)
        base, check, value = build_double_array(keys, [pieces[k] for k in keys])
        return cls(
            pieces=dict(pieces),
            scores=scores,
            byte_ids=byte_ids,
            unk_score=float(unk_score),
            char_starts=bool(char_starts),
            fallback=bool(fallback),
            exact32=bool(exact32),
            base=base,
            check=check,
            value=value,
            max_piece_bytes=max((len(k) for k in pieces), default=1),
        )


# --------------------------------------------------------------------------------------------
# Reference implementation.
# --------------------------------------------------------------------------------------------


class SplitMix64:
    """The 64-bit generator both paths use; ``uniform()`` is in [0, 1) with 53 random bits."""

    def __init__(self, seed: int):
        self.state = int(seed) & _MASK64

    def uniform(self) -> float:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return (z >> 11) * (1.0 / 9007199254740992.0)


def char_len(text: bytes, a: int, char_starts: bool) -> int:
    if not char_starts:
        return 1
    return min(int(ONE_CHAR_LEN[text[a] >> 4]), len(text) - a)


def edges(model: LatticeModel, text: bytes):
    """Yield (a, b, score, id) in processing order; id -1 is the fallback edge (emits bytes)."""
    a, n = 0, len(text)
    reached = {0}
    while a < n:
        m = char_len(text, a, model.char_starts)
        if a not in reached:  # no edge ends here (only without fallback edges)
            a += m
            continue
        single = False
        for k in range(1, min(model.max_piece_bytes, n - a) + 1):
            pid = model.pieces.get(text[a : a + k])
            if pid is not None:
                single = single or k == m
                reached.add(a + k)
                yield a, a + k, model.scores[pid], pid
        if not single and model.fallback:
            reached.add(a + m)
            yield a, a + m, model.unk_score, -1
        a += m


def no_path_message(model: LatticeModel, text: bytes) -> str:
    reach = {0} | {b for _, b, _, _ in edges(model, text)}
    first = min(b for b in range(len(text) + 1) if b not in reach)
    return (f"no segmentation covers the text: no piece ends at byte {first} of {text[:40]!r} "
            "(the vocabulary lacks single bytes and the model has no fallback)")


def stable_sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def lse(x: float, y: float) -> float:
    m = x if x > y else y
    return m + math.log1p(math.exp(-abs(x - y)))


def segment_ref(model: LatticeModel, text: bytes, mode: str = "viterbi", alpha: float = 0.1,
                seed: int = 0) -> list[int]:
    """One pass over the lattice (see the module docstring); returns the ids."""
    code = MODE_CODE[mode]
    n = len(text)
    acc = [0.0] * (n + 1)  # viterbi: best score; sample: logZ; sample_v1: held score
    back = [-1] * (n + 1)
    bid = [-1] * (n + 1)
    rng = SplitMix64(seed)
    for a, b, sc, pid in edges(model, text):
        if code == 0:
            if model.exact32:  # float32 sums, as SentencePiece
                cand = float(np.float32(np.float32(acc[a]) + np.float32(sc)))
            else:
                cand = acc[a] + float(sc)
            if back[b] < 0 or cand > acc[b]:
                acc[b] = cand
                back[b], bid[b] = a, pid
        elif code == 1:
            w = acc[a] + alpha * float(sc)
            if back[b] < 0:
                acc[b] = w
                back[b], bid[b] = a, pid
            else:
                z = lse(acc[b], w)
                acc[b] = z
                if rng.uniform() < math.exp(w - z):
                    back[b], bid[b] = a, pid
        else:
            new = acc[a] + float(sc)
            if back[b] < 0:
                acc[b] = new
                back[b], bid[b] = a, pid
            elif rng.uniform() < stable_sigmoid(alpha * (new - acc[b])):
                acc[b] = new
                back[b], bid[b] = a, pid
    if n and back[n] < 0:
        raise ValueError(no_path_message(model, text))
    out: list[int] = []
    b = n
    while b > 0:
        a = back[b]
        if bid[b] >= 0:
            out.append(bid[b])
        else:
            out.extend(int(model.byte_ids[c]) for c in reversed(text[a:b]))
        b = a
    out.reverse()
    return out


# --------------------------------------------------------------------------------------------
# Brute force (tests): every segmentation and its exact probability.
# --------------------------------------------------------------------------------------------


def all_segmentations(model: LatticeModel, text: bytes) -> list[tuple[tuple[int, ...], float]]:
    """Every path through the lattice as (ids, score). Exponential: short texts only."""
    out_edges: dict[int, list[tuple[int, float, int]]] = {}
    for a, b, sc, pid in edges(model, text):
        out_edges.setdefault(a, []).append((b, float(sc), pid))
    result = []

    def walk(a: int, ids: tuple[int, ...], score: float):
        if a == len(text):
            result.append((ids, score))
            return
        for b, sc, pid in out_edges.get(a, []):
            emitted = (pid,) if pid >= 0 else tuple(int(model.byte_ids[c]) for c in text[a:b])
            walk(b, ids + emitted, score + sc)

    walk(0, (), 0.0)
    return result


def exact_distribution(model: LatticeModel, text: bytes, alpha: float) -> dict[tuple[int, ...], float]:
    """P_alpha(seg) = exp(alpha * score) / Z over all segmentations (SPEC §3)."""
    segs = all_segmentations(model, text)
    logw = np.array([alpha * s for _, s in segs])
    p = np.exp(logw - logw.max())
    p /= p.sum()
    return {ids: float(q) for (ids, _), q in zip(segs, p)}


def brute_force_best(model: LatticeModel, text: bytes) -> tuple[tuple[int, ...], float]:
    return max(all_segmentations(model, text), key=lambda t: t[1])


def toy_model(pieces: dict[str, float], all_bytes: bool = False, char_starts: bool = True,
              fallback: bool = False) -> LatticeModel:
    """A model from {piece: score} for tests and examples; ids follow the dict order. With
    ``all_bytes`` the 256 single bytes are pieces too (ids after the named pieces, score -10);
    ``fallback`` adds fallback edges (score -20) as for SentencePiece models."""
    table = {p.encode(): i for i, p in enumerate(pieces)}
    scores = list(pieces.values())
    byte_ids = [-1] * 256
    if all_bytes:
        for c in range(256):
            key = bytes([c])
            if key not in table:
                table[key] = len(scores)
                scores.append(-10.0)
            byte_ids[c] = table[key]
    return LatticeModel.build(table, scores, byte_ids, unk_score=-20.0, char_starts=char_starts,
                              fallback=fallback)


def random_toy_model(rng: np.random.Generator, alphabet: bytes = b"abc", n_pieces: int = 12,
                     max_len: int = 4) -> LatticeModel:
    """A random vocabulary over ``alphabet``: all its single bytes plus random longer pieces."""
    cands = [bytes(p) for k in range(2, max_len + 1) for p in product(alphabet, repeat=k)]
    chosen = rng.choice(len(cands), size=min(n_pieces, len(cands)), replace=False)
    keys = [bytes([c]) for c in alphabet] + [cands[i] for i in sorted(chosen)]
    scores = rng.uniform(-6.0, -1.0, size=len(keys)).astype(np.float32)
    byte_ids = [-1] * 256
    for i, c in enumerate(alphabet):
        byte_ids[c] = i
    return LatticeModel.build({k: i for i, k in enumerate(keys)}, scores, byte_ids, unk_score=-20.0,
                              char_starts=False, fallback=False)
