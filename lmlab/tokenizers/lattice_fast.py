"""The compiled segmentation pass: ``lattice.segment_ref`` in numba, edge for edge and draw for draw.

Why numba: the pass is a tight loop over bytes with a trie lookup, one log-sum-exp and one uniform per
edge; the pure-Python reference runs it at ~0.09 MB/s (measured), ~100x below SentencePiece, and
this compiled pass at 5-9 MB/s (``scripts/bench/tokenizer.py``). numba is already a dependency, compiles
on first use and caches the machine code next to this file (``cache=True``), so nothing is built at
install time and no C toolchain is needed. ``warm_up()`` (called when a tokenizer is created or
unpickled in a DataLoader worker) keeps the one-off compile or cache load out of the hot loop.

Guarantees: for the same model, text, mode, alpha and seed, ``segment`` returns exactly the ids of
``lattice.segment_ref`` (tests compare them on random lattices and real text). The trie is the
double array of ``lattice.build_double_array``: from state s, byte c goes to base[s] + c iff
check[that] == s.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from lmlab.tokenizers.lattice import MODE_CODE, ONE_CHAR_LEN, LatticeModel, no_path_message

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_INV53 = 1.0 / 9007199254740992.0


@njit(cache=True, inline="always")
def _splitmix(state):
    state = state + _GOLDEN
    z = state
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    z = z ^ (z >> np.uint64(31))
    return state, float(z >> np.uint64(11)) * _INV53


@njit(cache=True, inline="always")
def _relax(mode, exact32, alpha, a, b, sc, pid, acc, back, bid, state):
    """Offer edge (a, b) with score ``sc`` to end b; returns the generator state."""
    if mode == 0:  # viterbi; in float32 like SentencePiece when exact32 (see lattice.py)
        if exact32:
            cand = np.float64(np.float32(acc[a]) + np.float32(sc))
        else:
            cand = acc[a] + sc
        if back[b] < 0 or cand > acc[b]:
            acc[b] = cand
            back[b] = a
            bid[b] = pid
    elif mode == 1:  # perfect sampling: running logZ, reservoir choice (SPEC §3)
        w = acc[a] + alpha * np.float64(sc)
        if back[b] < 0:
            acc[b] = w
            back[b] = a
            bid[b] = pid
        else:
            x = acc[b]
            z = (x if x > w else w) + math.log1p(math.exp(-abs(x - w)))
            acc[b] = z
            state, u = _splitmix(state)
            if u < math.exp(w - z):
                back[b] = a
                bid[b] = pid
    else:  # sample_v1: duel against the held route (SPEC §2)
        new = acc[a] + np.float64(sc)
        if back[b] < 0:
            acc[b] = new
            back[b] = a
            bid[b] = pid
        else:
            d = alpha * (new - acc[b])
            if d >= 0:
                p = 1.0 / (1.0 + math.exp(-d))
            else:
                e = math.exp(d)
                p = e / (1.0 + e)
            state, u = _splitmix(state)
            if u < p:
                acc[b] = new
                back[b] = a
                bid[b] = pid
    return state


@njit(cache=True)
def _segment(text, base, check, value, scores, byte_ids, unk_score, char_starts, fallback, exact32,
             one_char_len, mode, alpha, seed):
    n = text.shape[0]
    acc = np.zeros(n + 1, dtype=np.float64)  # viterbi: best; sample: logZ; sample_v1: held score
    back = np.full(n + 1, -1, dtype=np.int64)
    bid = np.full(n + 1, -1, dtype=np.int64)
    n_check = check.shape[0]
    state = seed
    a = 0
    while a < n:
        m = 1
        if char_starts:
            m = min(one_char_len[text[a] >> 4], n - a)
        if a > 0 and back[a] < 0:  # unreachable start (only without fallback edges)
            a += m
            continue
        single = False
        s = 0
        k = a
        while k < n:  # piece edges from a, shorter first
            t = base[s] + text[k]
            if t >= n_check or check[t] != s:
                break
            s = t
            k += 1
            pid = value[s]
            if pid >= 0:
                if k - a == m:
                    single = True
                state = _relax(mode, exact32, alpha, a, k, scores[pid], pid, acc, back, bid, state)
        if not single and fallback:  # the character has no piece: fallback edge (emits its bytes)
            state = _relax(mode, exact32, alpha, a, a + m, unk_score, -1, acc, back, bid, state)
        a += m
    if n > 0 and back[n] < 0:
        return np.empty(0, dtype=np.int32)  # no path; the caller raises
    # backtrack: count, then fill
    count = 0
    b = n
    while b > 0:
        a = back[b]
        count += 1 if bid[b] >= 0 else b - a
        b = a
    out = np.empty(count, dtype=np.int32)
    i = count
    b = n
    while b > 0:
        a = back[b]
        if bid[b] >= 0:
            i -= 1
            out[i] = bid[b]
        else:
            for j in range(b - 1, a - 1, -1):
                i -= 1
                out[i] = byte_ids[text[j]]
        b = a
    return out


def segment(model: LatticeModel, text: bytes, mode: str = "viterbi", alpha: float = 0.1,
            seed: int = 0) -> np.ndarray:
    """Segment UTF-8 ``text`` (bytes); returns int32 ids. Same contract as ``lattice.segment_ref``."""
    buf = np.frombuffer(text, dtype=np.uint8)
    ids = _segment(buf, model.base, model.check, model.value, model.scores, model.byte_ids,
                   float(model.unk_score), model.char_starts, model.fallback, model.exact32, ONE_CHAR_LEN,
                   MODE_CODE[mode], float(alpha), np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
    if len(text) and not len(ids):
        raise ValueError(no_path_message(model, text))
    return ids


def warm_up(model: LatticeModel) -> None:
    """Compile (or load from cache) once, outside any timed or hot loop."""
    for mode in MODE_CODE:
        segment(model, b"a", mode, 0.1, 1)
