"""The rotary schemes (SPEC §6-§8): reduction to RoPE-1D, relativity, layouts, M-RoPE against Qwen's form."""

import pytest
import torch

from lmlab.config import ModelConfig, load_variants
from lmlab.model.attention.base import AttentionConfig
from lmlab.model.pos.mrope import default_sections
from lmlab.model.pos.rotary import rotate_pairs
from lmlab.model.transformer import Transformer
from lmlab.registry import POS

load_variants()
F64 = torch.float64
ROTARY = ["rope", "rope2d", "rope_tie", "rope_tie_v2", "mrope"]
MULTI_AXIS = [("rope2d", {}), ("rope2d", {"n_axes": 3}), ("rope_tie", {}), ("rope_tie_v2", {}),
              ("rope_tie_v2", {"n_axes": 3}), ("mrope", {}), ("mrope", {"layout": "interleaved"})]
SEGMENTS = [("text", 3), ("image", 2, 3), ("text", 2), ("image", 3, 1), ("text", 1)]


def make_pos(name, head_dim=16, **kw):
    cls = POS.get(name)
    return cls(cls.Config(**kw), ModelConfig(d_model=2 * head_dim, n_head=2, n_layer=1))


def make_model(name, **kw):
    torch.manual_seed(0)
    mcfg = ModelConfig(d_model=32, n_head=2, n_layer=2, seq_len=32)
    pos_cfg = POS.get(name).Config(**kw)
    return Transformer(mcfg, AttentionConfig(name="mha"), pos_cfg, vocab_size=37).double().eval()


def text_positions(pos, T):
    return torch.arange(T, dtype=F64)[None, :, None].expand(1, T, pos.n_axes)


def interleaved_to_half(D):
    """perm with x_half = x_interleaved[perm]: half-layout pair k = (k, k+D/2) <- interleaved (2k, 2k+1)."""
    return torch.cat((torch.arange(0, D, 2), torch.arange(1, D, 2)))


def logits(pos, q, k, positions):
    return pos.rotate(q, positions) @ pos.rotate(k, positions).transpose(-1, -2)


@pytest.mark.parametrize("name,kw", MULTI_AXIS)
def test_plain_text_reduces_to_rope_1d_model(name, kw):
    # Whole Transformer, float64, identical weights: logits equal RoPE-1D's of the same layout to 1e-12.
    layout = kw.get("layout", POS.get(name).Config.layout)
    rope, other = make_model("rope", layout=layout), make_model(name, **kw)
    other.load_state_dict(rope.state_dict())
    idx = torch.randint(0, 37, (2, 20))
    pos1 = text_positions(rope.pos, 20).expand(2, -1, -1)
    posA = text_positions(other.pos, 20).expand(2, -1, -1)
    torch.testing.assert_close(other(idx, posA), rope(idx, pos1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name,kw", MULTI_AXIS)
def test_plain_text_rotation_equals_rope_1d(name, kw):
    # The rotated q itself is RoPE-1D's (same layout), exactly, at the large positions v1 produces.
    layout = kw.get("layout", POS.get(name).Config.layout)
    rope, other = make_pos("rope", layout=layout), make_pos(name, **kw)
    q = torch.randn(1, 2, 9, 16, dtype=F64)
    p = torch.tensor([0, 1, 2, 5, 17, 100, 1000, 12345, 1e5], dtype=F64)[None, :, None]
    assert torch.equal(other.rotate(q, p.expand(1, 9, other.n_axes)), rope.rotate(q, p))


def test_mrope_reduces_to_interleaved_rope_after_permutation():
    # M-RoPE (rotate_half) on text == RoPE-1D interleaved once the q/k head dims of the weights are permuted.
    rope, mrope = make_model("rope", layout="interleaved"), make_model("mrope")
    D, H = 16, 2
    perm = interleaved_to_half(D)
    rows = torch.cat([h * D + perm for h in range(H)])  # q rows, then k rows (kv_proj: k first, then v)
    state = {k: v.clone() for k, v in rope.state_dict().items()}
    for i in range(2):
        state[f"blocks.{i}.attn.q_proj.weight"] = state[f"blocks.{i}.attn.q_proj.weight"][rows]
        kv = state[f"blocks.{i}.attn.kv_proj.weight"]
        state[f"blocks.{i}.attn.kv_proj.weight"] = torch.cat((kv[: H * D][rows], kv[H * D :]))
    mrope.load_state_dict(state)
    idx = torch.randint(0, 37, (2, 20))
    out_m = mrope(idx, text_positions(mrope.pos, 20).expand(2, -1, -1))
    out_r = rope(idx, text_positions(rope.pos, 20).expand(2, -1, -1))
    torch.testing.assert_close(out_m, out_r, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ROTARY)
def test_layouts_agree_after_permutation(name):
    # SPEC §6: rotate_half(x[perm]) == rotate_interleaved(x)[perm] at every position (scheme's own angles).
    pos = make_pos(name)
    q = torch.randn(2, 3, 7, 16, dtype=F64)
    positions = torch.rand(2, 7, pos.n_axes, dtype=F64) * 50
    ang = pos.angles(positions, 16)
    perm = interleaved_to_half(16)
    half = rotate_pairs(q[..., perm], ang, "half")
    torch.testing.assert_close(half, rotate_pairs(q, ang, "interleaved")[..., perm], atol=1e-13, rtol=0)


@pytest.mark.parametrize("name", ROTARY)
@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_relativity(name, layout):
    # (R_p q)·(R_p' k) = q·(R_{p'-p} k): logits depend on the per-axis offsets only (float positions).
    pos = make_pos(name, layout=layout)
    q, k = torch.randn(2, 1, 5, 16, dtype=F64), torch.randn(2, 1, 5, 16, dtype=F64)
    p, p2 = torch.randn(2, 5, pos.n_axes, dtype=F64) * 30, torch.randn(2, 5, pos.n_axes, dtype=F64) * 30
    lhs = (pos.rotate(q, p) * pos.rotate(k, p2)).sum(-1)
    rhs = (q * pos.rotate(k, p2 - p)).sum(-1)
    torch.testing.assert_close(lhs, rhs, atol=1e-11, rtol=0)
    # and the rotation is orthogonal: norms are preserved
    torch.testing.assert_close(pos.rotate(q, p).norm(dim=-1), q.norm(dim=-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ROTARY)
def test_shift_invariance_on_assigned_positions(name):
    # Adding a constant per axis (half-integers included) to every position leaves q·k logits unchanged.
    pos = make_pos(name)
    positions = pos.assign(SEGMENTS).to(F64)[None]  # (1, T, A)
    T = positions.shape[1]
    q, k = torch.randn(1, 2, T, 16, dtype=F64), torch.randn(1, 2, T, 16, dtype=F64)
    shift = torch.tensor([3.5, -17.0, 41.25][: pos.n_axes], dtype=F64)
    torch.testing.assert_close(logits(pos, q, k, positions + shift), logits(pos, q, k, positions),
                               atol=1e-10, rtol=0)


def test_shift_invariance_whole_model():
    model = make_model("rope_tie_v2")
    positions = model.pos.assign(SEGMENTS).to(F64)[None]
    idx = torch.randint(0, 37, (1, positions.shape[1]))
    shift = torch.tensor([7.5, -3.0], dtype=F64)
    torch.testing.assert_close(model(idx, positions + shift), model(idx, positions), atol=1e-10, rtol=0)


def test_rope2d_depends_only_on_dx_dy():
    pos = make_pos("rope2d")
    q, k = torch.randn(1, 1, 1, 16, dtype=F64), torch.randn(1, 1, 1, 16, dtype=F64)

    def logit(pq, pk):
        pq, pk = torch.tensor(pq, dtype=F64).view(1, 1, 2), torch.tensor(pk, dtype=F64).view(1, 1, 2)
        return (pos.rotate(q, pq) * pos.rotate(k, pk)).sum()

    ref = logit([2, 3], [5, 1])  # (Δx, Δy) = (3, -2)
    for base in ([0, 0], [10, -4], [0.5, 7.25]):
        torch.testing.assert_close(logit(base, [base[0] + 3, base[1] - 2]), ref, atol=1e-12, rtol=0)
    # The axes are distinct (invertibility; a single rotation by x+y would fail this).
    assert not torch.allclose(logit([0, 0], [3, -2]), logit([0, 0], [-2, 3]))
    assert not torch.allclose(logit([0, 0], [1, 0]), logit([0, 0], [0, 1]))


def test_rope2d_positions_decodable_from_angles():
    # Invertibility (SPEC §7): pair 0 (θ=1) turns by x, pair 1 (θ=base^(-2/D)) by y.
    pos = make_pos("rope2d")
    p = torch.tensor([[[1.25, -2.5]]], dtype=F64)
    e = torch.zeros(1, 1, 1, 16, dtype=F64)
    e[..., 0] = e[..., 2] = 1.0
    r = pos.rotate(e, p)[0, 0, 0]
    theta1 = 10000.0 ** (-2 / 16)
    assert torch.atan2(r[1], r[0]).item() == pytest.approx(1.25, abs=1e-12)
    assert (torch.atan2(r[3], r[2]) / theta1).item() == pytest.approx(-2.5, abs=1e-12)


def test_mrope_default_sections():
    assert default_sections(64) == [16, 24, 24]  # Qwen2-VL, head_dim 128
    assert default_sections(16) == [4, 6, 6]  # SPEC §15.4, head_dim 32
    for n in range(3, 80):
        s = default_sections(n)
        assert sum(s) == n and min(s) >= 1


def qwen_mrope(q, pos3, sections, base):
    """Qwen2-VL's apply_multimodal_rotary_pos_emb, rewritten from its published form. pos3 (3, B, T)."""
    D = q.shape[-1]
    inv = 1.0 / base ** (torch.arange(0, D, 2, dtype=F64) / D)
    emb = torch.cat((pos3[..., None] * inv,) * 2, dim=-1)  # (3, B, T, D)
    cos = torch.cat([m[i % 3] for i, m in enumerate(emb.cos().split(sections * 2, dim=-1))], -1)[:, None]
    sin = torch.cat([m[i % 3] for i, m in enumerate(emb.sin().split(sections * 2, dim=-1))], -1)[:, None]
    rot_half = torch.cat((-q[..., D // 2 :], q[..., : D // 2]), dim=-1)
    return q * cos + rot_half * sin


@pytest.mark.parametrize("sections", [None, [2, 2, 4], [8, 0, 0]])
def test_mrope_matches_qwen_form(sections):
    pos = make_pos("mrope", sections=sections, base=1e6)
    positions = pos.assign([("text", 2), ("video", 2, 3, 2), ("text", 3)]).to(F64)[None]
    q = torch.randn(1, 2, positions.shape[1], 16, dtype=F64)
    ref = qwen_mrope(q, positions.permute(2, 0, 1), sections or default_sections(8), 1e6)
    torch.testing.assert_close(pos.rotate(q, positions), ref, atol=1e-12, rtol=0)


def test_wrong_number_of_axes_is_a_clear_error():
    pos = make_pos("rope2d")
    with pytest.raises(ValueError, match="takes positions with 2 axes"):
        pos.rotate(torch.randn(1, 1, 3, 16), torch.zeros(1, 3, 1))
