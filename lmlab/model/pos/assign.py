"""Position assigners: coordinates for every slot of a text/image/video sequence (SPEC §8, §15.4).

A sequence is a list of segments, each one of

    ("text", n)            n text-like slots (words, [IMG], [/IMG], [BOS] ... all count as text)
    ("image", h, w)        an h×w grid of patches in raster order (row i = 1..h, column j = 1..w)
    ("video", t, h, w)     t frames of h×w patches, frame by frame, each frame in raster order

and ``assign_positions(segments, scheme, n_axes)`` returns a float tensor (N, A), N the total number
of slots. Text token n always sits at (n, n[, n]), counting from 0 (the "compatibility" principle:
on plain text every scheme is RoPE-1D). ``L`` below is the position of the last text-like slot
(-1 before any), so the next text token is at L + 1 unless an image moved it.

Schemes (name -> placement of an image after L; the next text position):

- ``flat``    patches at L+1 .. L+hw in raster order (RoPE-1D over the flattened sequence); L + hw + 1.
- ``rope2d``  patch (i, j) at (L+i, L+j); L + max(h, w) + 1 (SPEC §15.4). Video: (L+τ, L+i, L+j), 3 axes.
- ``tie_v1``  RoPE-Tie (S14): patch (i, j) at (L + i(w+1), L + j(h+1)); L + (w+1)(h+1). Integer
              positions; the gaps text->first patch and last patch->text are both (w+1, h+1). 2-D only.
- ``tie_v2``  RoPE-Tie-v2 (S15): β_k = L + (N - size_k)/2 with N = hw (images) or thw (video), patch
              coordinates β_k + index_k (1-based); next text L + N + 1. Half-integers happen; unit
              spacing inside the image, equal gaps on both sides.
- ``mrope``   Qwen2-VL M-RoPE (S16): S = L + 1, patch (τ, i, j) zero-based at (S+τ, S+i, S+j); next
              text at (max id so far) + 1 = L + max(t, h, w) + 1. Images have t = 1.

Axis order: 2-D schemes use (row, column); 3-D ones use (time, row, column), as M-RoPE does. With
``n_axes = 3`` an image is a one-frame video (``rope2d``/``mrope``: time coordinate L + 1; ``tie_v2``:
β_t + 1 with size_t = 1), and with ``n_axes = 1`` (``flat`` only) the single axis is the flat index.
A video under a 2-D scheme is an error: flatten it into images with markers instead (S15).

Guarantees (tests/test_pos_assign.py): the SPEC §8 worked example (L=5, w=3, h=2) for v1 and v2,
the gap symmetry of v1/v2, v2's next text at L + wh + 1, the Hugging Face M-RoPE docstring example.
Cost O(N). Positions are exact in float32 below 2^23.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

SCHEMES = ("flat", "rope2d", "tie_v1", "tie_v2", "mrope")

_ALLOWED_AXES = {"flat": (1, 2, 3), "rope2d": (2, 3), "tie_v1": (2,), "tie_v2": (2, 3), "mrope": (3,)}


def _segment(seg: Sequence[Any]) -> tuple[str, tuple[int, ...]]:
    kind, *dims = seg
    need = {"text": 1, "image": 2, "video": 3}.get(kind)
    if need is None:
        raise ValueError(f"unknown segment kind {kind!r} in {seg!r}; expected text, image or video")
    if len(dims) != need or any(int(d) != d or d < 0 for d in dims):
        raise ValueError(f"segment {seg!r}: {kind} takes {need} non-negative integer size(s)")
    if kind != "text" and min(dims) == 0:
        raise ValueError(f"segment {seg!r}: an empty {kind}")
    return kind, tuple(int(d) for d in dims)


def _grid(sizes: tuple[int, ...], start: int, dtype) -> torch.Tensor:
    """All index tuples of a grid, last axis fastest (raster order), from ``start``. (N, len(sizes))."""
    axes = [torch.arange(start, start + s, dtype=dtype) for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


def assign_positions(
    segments: Sequence[Sequence[Any]],
    scheme: str,
    n_axes: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Coordinates (N, A) of every slot of ``segments`` under ``scheme`` (see the module docstring).

    ``n_axes`` defaults to 1 for flat, 2 for rope2d/tie_v1/tie_v2, 3 for mrope.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}; available: {', '.join(SCHEMES)}")
    A = n_axes if n_axes is not None else {"flat": 1, "mrope": 3}.get(scheme, 2)
    if A not in _ALLOWED_AXES[scheme]:
        raise ValueError(
            f"position scheme {scheme!r} has {'/'.join(map(str, _ALLOWED_AXES[scheme]))} axes, not {A}"
        )
    # Work in float64 (exact for halves) and cast at the end.
    f64 = torch.float64
    out: list[torch.Tensor] = []
    L = -1.0  # position of the last text-like slot
    for seg in segments:
        kind, dims = _segment(seg)
        if kind == "text":
            (n,) = dims
            p = L + 1 + torch.arange(n, dtype=f64)
            out.append(p[:, None].expand(n, A))
            L += n
            continue
        if kind == "video" and A < 3 and scheme != "flat":
            raise ValueError(
                f"a video segment {seg!r} needs 3 position axes; scheme {scheme!r} has {A} "
                "(use mrope, or rope2d/tie_v2 with 3 axes, or split the video into images)"
            )
        # (t, h, w) for 3 axes, (h, w) for 2; an image under 3 axes is one frame
        sizes = dims if kind == "video" else ((1, *dims) if A == 3 else dims)
        n_slots = 1
        for s in sizes:
            n_slots *= s
        if scheme == "flat":
            p = L + 1 + torch.arange(n_slots, dtype=f64)
            out.append(p[:, None].expand(n_slots, A))
            L += n_slots
        elif scheme in ("rope2d", "mrope"):  # identical layouts; M-RoPE writes it as S + zero-based
            out.append(L + _grid(sizes, 1, f64))
            L += max(sizes)
        elif scheme == "tie_v1":
            h, w = sizes
            step = torch.tensor([w + 1.0, h + 1.0], dtype=f64)
            out.append(L + _grid(sizes, 1, f64) * step)
            L += (w + 1) * (h + 1) - 1
        else:  # tie_v2
            beta = torch.tensor([L + (n_slots - s) / 2 for s in sizes], dtype=f64)
            out.append(beta + _grid(sizes, 1, f64))
            L += n_slots
    if not out:
        return torch.zeros(0, A, dtype=dtype)
    return torch.cat(out).to(dtype)


def scheme_of(pos_module: Any) -> str:
    """The assignment scheme a pos module declares (``PosEncoding.position_scheme``, default flat:
    images laid out as RoPE-1D over the raster order)."""
    return getattr(pos_module, "position_scheme", "flat")


def assign_for(pos_module: Any, segments: Sequence[Sequence[Any]], dtype=torch.float32) -> torch.Tensor:
    """Positions (N, A) for ``segments`` as ``pos_module`` wants them, whatever its scheme."""
    return assign_positions(segments, scheme_of(pos_module), pos_module.n_axes, dtype)
