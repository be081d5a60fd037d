"""The fused SDPA kernel and the manual reference compute the same attention."""

import pytest
import torch

from lmlab.model import kernels


@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("tq,sk", [(7, 7), (1, 9), (3, 9)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_sdpa_equals_manual(H, G, tq, sk, with_bias):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, H, tq, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, G, sk, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, G, sk, 5, generator=g, dtype=torch.float64)
    bias = torch.randn(1, H, tq, sk, generator=g, dtype=torch.float64) if with_bias else None
    a = kernels.attention(q, k, v, bias=bias, impl="sdpa")
    b = kernels.attention(q, k, v, bias=bias, impl="manual")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_bottom_right_causal_alignment():
    """A query at the end of a cache sees every key; the first of 3 new queries sees all but 2."""
    m = kernels.causal_mask(3, 5, torch.device("cpu"))
    assert m.tolist() == [
        [True, True, True, False, False],
        [True, True, True, True, False],
        [True, True, True, True, True],
    ]


def test_decode_rows_match_full_attention():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64)
    k = torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, 6, 4, generator=g, dtype=torch.float64)
    full = kernels.attention(q, k, v)
    last2 = kernels.attention(q[:, :, 4:], k, v)
    torch.testing.assert_close(full[:, :, 4:], last2)
