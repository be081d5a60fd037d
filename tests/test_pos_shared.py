"""Position tables shared across layers (issue 11 item 5): computed once per forward pass, and the
model's output is bit-identical to every layer computing its own (the pre-sharing behaviour)."""

import pytest
import torch

from lmlab.config import ModelConfig, load_variants
from lmlab.model.pos.rotary import RotaryBase
from lmlab.model.transformer import Transformer
from lmlab.registry import ATTENTION, POS

load_variants()
V = 29


def make(pos, attn="mha", n_layer=3):
    torch.manual_seed(0)
    mcfg = ModelConfig(d_model=32, n_head=4, n_layer=n_layer, seq_len=16)
    return Transformer(mcfg, ATTENTION.get(attn).Config(), POS.get(pos).Config(), V).eval()


def unshared_forward(model, idx):
    """The forward pass with every layer computing its own tables (no shared_tables block)."""
    x = model.tok_emb(idx)
    positions = model.pos.default_positions(*idx.shape, device=idx.device)
    x = model.pos.embed(x, positions)
    for block in model.blocks:
        x = block(x, positions)
    return model.lm_head(model.norm_f(x))


@pytest.mark.parametrize("pos,attn", [("rope", "mha"), ("rope2d", "gqa"), ("mrope", "mha"),
                                      ("rope", "mla"), ("alibi", "mha"), ("alibi", "mla")])
def test_shared_tables_change_nothing(pos, attn):
    model = make(pos, attn)
    idx = torch.randint(0, V, (2, 16))
    torch.testing.assert_close(model(idx), unshared_forward(model, idx), atol=0, rtol=0)


def test_rotary_angles_once_per_forward(monkeypatch):
    model = make("rope", n_layer=3)
    calls = []
    real = RotaryBase.angles
    monkeypatch.setattr(RotaryBase, "angles", lambda self, p, d: calls.append(d) or real(self, p, d))
    idx = torch.randint(0, V, (2, 16))
    model(idx)
    assert len(calls) == 1  # q and k of 3 layers: 6 rotations, one table
    unshared_forward(model, idx)
    assert len(calls) == 1 + 6  # outside the block every rotation computes its own
    assert model.pos._memo == {} and model.pos._shared_for is None  # nothing kept past the forward


def test_alibi_bias_once_per_forward_and_fresh_when_decoding(monkeypatch):
    model = make("alibi", n_layer=3)
    calls = []
    real = torch.Tensor.abs
    monkeypatch.setattr(torch.Tensor, "abs", lambda t: calls.append(1) or real(t))
    idx = torch.randint(0, V, (1, 8))
    full = model(idx)
    assert len(calls) == 1
    caches = model.new_caches()
    steps = [model(idx[:, :5], caches=caches)] + [model(idx[:, i : i + 1], caches=caches) for i in range(5, 8)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


def pairwise_reference(t, angles, layout):
    """The textbook pairwise rotation (the formula lmlab used before the whole-tensor form)."""
    cos, sin = angles.cos()[:, None].to(t.dtype), angles.sin()[:, None].to(t.dtype)
    if layout == "interleaved":
        x0, x1 = t[..., 0::2], t[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    x0, x1 = t[..., : t.shape[-1] // 2], t[..., t.shape[-1] // 2 :]
    return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)


@pytest.mark.parametrize("layout", ["interleaved", "half"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_whole_tensor_rotation_is_bit_identical_to_pairwise(layout, dtype):
    from lmlab.model.pos.rotary import rotate_pairs

    torch.manual_seed(0)
    t = torch.randn(2, 50, 3, 16).to(dtype).transpose(1, 2)  # (B, H, T, D), non-contiguous like q
    angles = torch.rand(2, 50, 8) * 100
    torch.testing.assert_close(rotate_pairs(t, angles, layout), pairwise_reference(t, angles, layout),
                               atol=0, rtol=0)
