"""Which peer architecture an lmlab configuration is, and the weight mapping in both directions.

Families (``family(run)``):
- ``llama``: attention mha|gqa|mqa, pos=rope (either layout), mlp=swiglu, norm=rmsnorm; attention
  biases map to Llama's ``attention_bias`` (q, k, v *and* o, like lmlab's ``attention.bias``), MLP
  biases to ``mlp_bias``. Qwen2 (q/k/v biases, none on o) is imported as this lmlab configuration
  with a zero o_proj bias; it is never the export target because Qwen2 cannot hold an o_proj bias.
- ``qwen3``: the same with ``model.qk_norm=true`` (one RMSNorm gain over head_dim for all query heads,
  one for keys, applied before RoPE, eps = ``model.norm_eps`` like the layer norms: Qwen3's
  ``q_norm``/``k_norm``) and no MLP biases (Qwen3's MLP has none); ``attention_bias`` covers q, k, v
  and o as in Llama. Written with no sliding window (every layer ``full_attention``), default RoPE.
- ``deepseek_v3``: attention=mla with pos=rope, swiglu, rmsnorm, every layer dense.
- ``gpt2``: pos=learned, norm=layernorm, mlp=gelu_tanh (or exact gelu), attention=mha with
  head_dim = d_model/n_head; missing biases are written as zeros (the same function).

Refused for every family: ``model.logit_softcap`` (none of these peers applies a final-logit tanh
cap; Gemma 2 does, but with other blocks: scaled embeddings, (1 + w) norm gains, sandwich norms,
GeGLU) and ``model.qk_norm`` outside mha|gqa|mqa + rope (GPT-2 and DeepSeek-V3 have no such norm).

Layout facts the mapping handles: lmlab's ``kv_proj`` is [k; v] and swiglu ``mlp.up`` is [gate; up];
lmlab's default RoPE layout ``interleaved`` pairs dims (2i, 2i+1) where Llama's rotate-half pairs
(i, i + D/2), so q/k rows are permuted per head (``pos.layout=half`` needs no permutation), and
Qwen3's q/k norm gains (over one head's dims) by the same permutation, since RMS is order-free;
DeepSeek-V3 reads interleaved rotary weights itself (``rope_interleave``); GPT-2's Conv1D stores
weights transposed and fuses q, k, v.
"""

from __future__ import annotations

import torch

from lmlab.interop import InteropError
from lmlab.model.transformer import ffn_hidden


def family(run) -> str:
    """The peer architecture of ``run`` (a RunConfig), or InteropError naming what has none."""
    m, a, p = run.model, run.attention, run.pos
    if m.logit_softcap is not None:
        raise InteropError(
            f"model.logit_softcap={m.logit_softcap}: no transformers architecture with these blocks caps the"
            " final logits with c*tanh(logits/c) (train with model.logit_softcap=null to export)"
        )
    qk_norm = bool(getattr(m, "qk_norm", False))
    if qk_norm and (a.name not in ("mha", "gqa", "mqa") or p.name != "rope"):
        raise InteropError(
            f"model.qk_norm=true with attention.name={a.name}, pos.name={p.name}: only Qwen3 (attention=mha|gqa|mqa"
            " with pos=rope) has per-head q/k RMSNorm; GPT-2 and DeepSeek-V3 have none"
        )
    if a.name in ("mha", "gqa", "mqa"):
        if p.name == "learned":
            return _gpt2_checks(run)
        if p.name != "rope":
            raise InteropError(
                f"pos.name={p.name}: no transformers architecture pairs it with attention.name={a.name}"
                " (exportable: pos=rope -> Llama, pos=learned with norm=layernorm -> GPT-2)"
            )
        if m.mlp != "swiglu":
            raise InteropError(f"model.mlp={m.mlp} with pos=rope: Llama's MLP is SwiGLU (set model.mlp=swiglu)")
        if m.norm != "rmsnorm":
            raise InteropError(f"model.norm={m.norm} with pos=rope: Llama normalises with RMSNorm")
        if qk_norm:
            if m.bias:
                raise InteropError(
                    "model.bias=true with model.qk_norm=true: Qwen3 (the peer with q/k norms) has no MLP biases"
                )
            return "qwen3"
        return "llama"
    if a.name == "mla":
        if p.name != "rope":
            raise InteropError(f"pos.name={p.name} with attention=mla: DeepSeek-V3 rotates with pos=rope only")
        if m.mlp != "swiglu" or m.norm != "rmsnorm" or m.bias:
            raise InteropError(
                f"attention=mla with model.mlp={m.mlp}, model.norm={m.norm}, model.bias={m.bias}: DeepSeek-V3"
                " has a bias-free SwiGLU MLP and RMSNorm"
            )
        if m.norm_eps != 1e-6:
            raise InteropError(
                f"model.norm_eps={m.norm_eps} with attention=mla: lmlab's MLA q_norm/kv_norm use model.norm_eps"
                " but DeepSeek-V3 fixes them at 1e-6, so the exported model would compute a different"
                " function; train with model.norm_eps=1e-6 to export"
            )
        return "deepseek_v3"
    raise InteropError(f"attention.name={a.name}: no transformers architecture has this attention")


def _gpt2_checks(run) -> str:
    m, a = run.model, run.attention
    if a.name != "mha":
        raise InteropError(f"attention.name={a.name} with pos=learned: GPT-2 has only multi-head attention")
    if m.norm != "layernorm":
        raise InteropError(f"model.norm={m.norm} with pos=learned: GPT-2 normalises with LayerNorm")
    if m.mlp not in ("gelu_tanh", "gelu"):
        raise InteropError(f"model.mlp={m.mlp} with pos=learned: GPT-2's MLP is gelu_tanh (or gelu)")
    if m.head_dim * m.n_head != m.d_model:
        raise InteropError(f"model.head_dim={m.head_dim}: GPT-2's head size is always d_model/n_head")
    return "gpt2"


def rope_perm(head_dim: int) -> torch.Tensor:
    """Row order taking lmlab's interleaved rotary layout to rotate-half: [0, 2, 4, ..., 1, 3, 5, ...]."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def _permute_heads(w: torch.Tensor, n_heads: int, perm: torch.Tensor) -> torch.Tensor:
    """Permute the rows of each head's block of w (rows = n_heads * head_dim, any trailing dims)."""
    D = w.shape[0] // n_heads
    return w.reshape(n_heads, D, *w.shape[1:])[:, perm].reshape(w.shape)


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    return torch.argsort(perm)


# --------------------------------------------------------------------------------------------
# lmlab -> transformers
# --------------------------------------------------------------------------------------------


def hf_config_dict(run, vocab_size: int, fam: str) -> dict:
    """Keyword arguments of the transformers config class for ``fam``."""
    m, a, p = run.model, run.attention, run.pos
    common = {"vocab_size": vocab_size, "tie_word_embeddings": m.tie_embeddings}
    if fam == "gpt2":
        return {
            **common, "n_embd": m.d_model, "n_layer": m.n_layer, "n_head": m.n_head,
            "n_positions": p.max_len or m.seq_len, "n_inner": ffn_hidden(m),
            "activation_function": "gelu_pytorch_tanh" if m.mlp == "gelu_tanh" else "gelu",
            "layer_norm_epsilon": m.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        }
    rope = {"rope_type": "default", "rope_theta": float(p.base)}
    base = {
        **common, "hidden_size": m.d_model, "intermediate_size": ffn_hidden(m),
        "num_hidden_layers": m.n_layer, "num_attention_heads": m.n_head, "rms_norm_eps": m.norm_eps,
        "max_position_embeddings": m.seq_len, "rope_parameters": rope, "attention_bias": a.bias,
        "hidden_act": "silu", "attention_dropout": 0.0,
    }
    if fam == "llama":
        n_kv = {"mha": m.n_head, "mqa": 1}.get(a.name) or a.n_kv_head
        return {**base, "num_key_value_heads": n_kv, "head_dim": m.head_dim, "mlp_bias": m.bias}
    if fam == "qwen3":  # q/k norms share rms_norm_eps with the layer norms, as lmlab's share model.norm_eps
        n_kv = {"mha": m.n_head, "mqa": 1}.get(a.name) or a.n_kv_head
        return {
            **base, "num_key_value_heads": n_kv, "head_dim": m.head_dim, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": m.n_layer, "layer_types": ["full_attention"] * m.n_layer,
        }
    d_c, d_r, d_n, d_v = a.dims(m)
    return {
        **base, "num_key_value_heads": m.n_head, "kv_lora_rank": d_c, "q_lora_rank": a.q_lora_rank,
        "qk_rope_head_dim": d_r, "qk_nope_head_dim": d_n, "v_head_dim": d_v,
        "first_k_dense_replace": m.n_layer, "n_routed_experts": 1, "n_shared_experts": 1,
        "num_experts_per_tok": 1, "n_group": 1, "topk_group": 1, "moe_intermediate_size": 1,
        "rope_interleave": p.layout == "interleaved", "num_nextn_predict_layers": 0,
    }


def to_hf_state(model, run, fam: str) -> dict[str, torch.Tensor]:
    """The transformers state dict (float tensors, fresh copies) of lmlab ``model``."""
    m = run.model
    sd: dict[str, torch.Tensor] = {}
    F = ffn_hidden(m)

    def put(name, t):
        sd[name] = t.detach().clone().contiguous()

    if fam == "gpt2":
        put("transformer.wte.weight", model.tok_emb.weight)
        put("transformer.wpe.weight", model.pos.table.weight)
        C = m.d_model
        zeros = torch.zeros
        for i, b in enumerate(model.blocks):
            pre = f"transformer.h.{i}."
            for hf, norm in (("ln_1", b.norm1), ("ln_2", b.norm2)):
                put(pre + hf + ".weight", norm.weight)
                put(pre + hf + ".bias", norm.bias if norm.bias is not None else zeros(C))
            at = b.attn
            put(pre + "attn.c_attn.weight", torch.cat((at.q_proj.weight, at.kv_proj.weight)).T)
            qkv_b = torch.cat((at.q_proj.bias, at.kv_proj.bias)) if at.q_proj.bias is not None else zeros(3 * C)
            put(pre + "attn.c_attn.bias", qkv_b)
            put(pre + "attn.c_proj.weight", at.o_proj.weight.T)
            put(pre + "attn.c_proj.bias", at.o_proj.bias if at.o_proj.bias is not None else zeros(C))
            put(pre + "mlp.c_fc.weight", b.mlp.up.weight.T)
            put(pre + "mlp.c_fc.bias", b.mlp.up.bias if b.mlp.up.bias is not None else zeros(F))
            put(pre + "mlp.c_proj.weight", b.mlp.down.weight.T)
            put(pre + "mlp.c_proj.bias", b.mlp.down.bias if b.mlp.down.bias is not None else zeros(C))
        put("transformer.ln_f.weight", model.norm_f.weight)
        put("transformer.ln_f.bias", model.norm_f.bias if model.norm_f.bias is not None else zeros(C))
        put("lm_head.weight", model.lm_head.weight)
        return sd

    put("model.embed_tokens.weight", model.tok_emb.weight)
    perm = rope_perm(m.head_dim) if run.pos.layout == "interleaved" else None
    for i, b in enumerate(model.blocks):
        pre = f"model.layers.{i}."
        put(pre + "input_layernorm.weight", b.norm1.weight)
        put(pre + "post_attention_layernorm.weight", b.norm2.weight)
        at = b.attn
        if fam in ("llama", "qwen3"):
            H, G = at.n_head, at.n_kv_head
            for suffix in ("weight", "bias") if run.attention.bias else ("weight",):
                q = getattr(at.q_proj, suffix)
                k, v = getattr(at.kv_proj, suffix).chunk(2, dim=0)
                if perm is not None:
                    q, k = _permute_heads(q, H, perm), _permute_heads(k, G, perm)
                put(pre + f"self_attn.q_proj.{suffix}", q)
                put(pre + f"self_attn.k_proj.{suffix}", k)
                put(pre + f"self_attn.v_proj.{suffix}", v)
                put(pre + f"self_attn.o_proj.{suffix}", getattr(at.o_proj, suffix))
            if fam == "qwen3":  # one gain over a head's dims: permuted like each head's rows
                for hf_n, norm in (("q_norm", at.q_norm), ("k_norm", at.k_norm)):
                    put(pre + f"self_attn.{hf_n}.weight", norm.weight if perm is None else norm.weight[perm])
        else:  # MLA: same [nope | rope] per-head orders; DeepSeek reads interleaved rope itself
            if at.cfg.q_lora_rank:
                put(pre + "self_attn.q_a_proj.weight", at.q_down.weight)
                put(pre + "self_attn.q_a_layernorm.weight", at.q_norm.weight)
                put(pre + "self_attn.q_b_proj.weight", at.q_up.weight)
                if at.q_down.bias is not None:
                    put(pre + "self_attn.q_a_proj.bias", at.q_down.bias)
            else:
                put(pre + "self_attn.q_proj.weight", at.q_up.weight)
            put(pre + "self_attn.kv_a_proj_with_mqa.weight", at.kv_down.weight)
            put(pre + "self_attn.kv_a_layernorm.weight", at.kv_norm.weight)
            put(pre + "self_attn.kv_b_proj.weight", at.kv_up.weight)
            put(pre + "self_attn.o_proj.weight", at.o_proj.weight)
            if at.kv_down.bias is not None:
                put(pre + "self_attn.kv_a_proj_with_mqa.bias", at.kv_down.bias)
                put(pre + "self_attn.o_proj.bias", at.o_proj.bias)
        for suffix in ("weight", "bias") if b.mlp.up.bias is not None else ("weight",):
            gate, up = getattr(b.mlp.up, suffix).chunk(2, dim=0)
            put(pre + f"mlp.gate_proj.{suffix}", gate)
            put(pre + f"mlp.up_proj.{suffix}", up)
            put(pre + f"mlp.down_proj.{suffix}", getattr(b.mlp.down, suffix))
    put("model.norm.weight", model.norm_f.weight)
    put("lm_head.weight", model.lm_head.weight)
    return sd


# --------------------------------------------------------------------------------------------
# transformers -> lmlab
# --------------------------------------------------------------------------------------------


def from_hf_state(hf: dict[str, torch.Tensor], run, fam: str, n_layer: int) -> dict[str, torch.Tensor]:
    """lmlab state dict (without the position module's entries) from a transformers state dict.

    ``fam`` is ``llama`` (also Qwen2), ``qwen3``, ``deepseek_v3`` or ``gpt2``. Keys the lmlab model expects but the
    mapping does not produce are reported by ``load_state_dict`` at the caller.
    """
    sd: dict[str, torch.Tensor] = {}
    get = hf.__getitem__
    if fam == "gpt2":
        sd["tok_emb.weight"] = get("transformer.wte.weight")
        sd["pos.table.weight"] = get("transformer.wpe.weight")
        for i in range(n_layer):
            pre, out = f"transformer.h.{i}.", f"blocks.{i}."
            for hf_n, lm_n in (("ln_1", "norm1"), ("ln_2", "norm2")):
                sd[out + lm_n + ".weight"] = get(pre + hf_n + ".weight")
                sd[out + lm_n + ".bias"] = get(pre + hf_n + ".bias")
            w, bias = get(pre + "attn.c_attn.weight").T, get(pre + "attn.c_attn.bias")
            C = w.shape[1]
            sd[out + "attn.q_proj.weight"], sd[out + "attn.kv_proj.weight"] = w[:C], w[C:]
            sd[out + "attn.q_proj.bias"], sd[out + "attn.kv_proj.bias"] = bias[:C], bias[C:]
            sd[out + "attn.o_proj.weight"] = get(pre + "attn.c_proj.weight").T
            sd[out + "attn.o_proj.bias"] = get(pre + "attn.c_proj.bias")
            sd[out + "mlp.up.weight"] = get(pre + "mlp.c_fc.weight").T
            sd[out + "mlp.up.bias"] = get(pre + "mlp.c_fc.bias")
            sd[out + "mlp.down.weight"] = get(pre + "mlp.c_proj.weight").T
            sd[out + "mlp.down.bias"] = get(pre + "mlp.c_proj.bias")
        sd["norm_f.weight"], sd["norm_f.bias"] = get("transformer.ln_f.weight"), get("transformer.ln_f.bias")
        sd["lm_head.weight"] = hf.get("lm_head.weight", sd["tok_emb.weight"])
        return {k: v.contiguous() for k, v in sd.items()}

    m = run.model
    sd["tok_emb.weight"] = get("model.embed_tokens.weight")
    inv = _inverse(rope_perm(m.head_dim)) if run.pos.layout == "interleaved" else None
    for i in range(n_layer):
        pre, out = f"model.layers.{i}.", f"blocks.{i}."
        sd[out + "norm1.weight"] = get(pre + "input_layernorm.weight")
        sd[out + "norm2.weight"] = get(pre + "post_attention_layernorm.weight")
        if fam in ("llama", "qwen3"):
            H = m.n_head
            for suffix in ("weight", "bias"):
                if pre + f"self_attn.q_proj.{suffix}" not in hf:
                    continue
                q, k = get(pre + f"self_attn.q_proj.{suffix}"), get(pre + f"self_attn.k_proj.{suffix}")
                G = k.shape[0] // m.head_dim
                if inv is not None:
                    q, k = _permute_heads(q, H, inv), _permute_heads(k, G, inv)
                sd[out + f"attn.q_proj.{suffix}"] = q
                sd[out + f"attn.kv_proj.{suffix}"] = torch.cat((k, get(pre + f"self_attn.v_proj.{suffix}")))
            sd[out + "attn.o_proj.weight"] = get(pre + "self_attn.o_proj.weight")
            if run.attention.bias:  # Qwen2 has q/k/v biases but none on o: the same function with o's = 0
                sd[out + "attn.o_proj.bias"] = hf.get(
                    pre + "self_attn.o_proj.bias", torch.zeros(sd[out + "attn.o_proj.weight"].shape[0])
                )
            if fam == "qwen3":
                for hf_n in ("q_norm", "k_norm"):
                    g = get(pre + f"self_attn.{hf_n}.weight")
                    sd[out + f"attn.{hf_n}.weight"] = g if inv is None else g[inv]
        else:
            if pre + "self_attn.q_a_proj.weight" in hf:
                sd[out + "attn.q_down.weight"] = get(pre + "self_attn.q_a_proj.weight")
                sd[out + "attn.q_norm.weight"] = get(pre + "self_attn.q_a_layernorm.weight")
                sd[out + "attn.q_up.weight"] = get(pre + "self_attn.q_b_proj.weight")
                if pre + "self_attn.q_a_proj.bias" in hf:
                    sd[out + "attn.q_down.bias"] = get(pre + "self_attn.q_a_proj.bias")
            else:
                sd[out + "attn.q_up.weight"] = get(pre + "self_attn.q_proj.weight")
            for hf_n, lm_n in (("kv_a_proj_with_mqa", "kv_down"), ("kv_b_proj", "kv_up"), ("o_proj", "o_proj")):
                for suffix in ("weight", "bias"):
                    if pre + f"self_attn.{hf_n}.{suffix}" in hf:
                        sd[out + f"attn.{lm_n}.{suffix}"] = get(pre + f"self_attn.{hf_n}.{suffix}")
            sd[out + "attn.kv_norm.weight"] = get(pre + "self_attn.kv_a_layernorm.weight")
        for suffix in ("weight", "bias"):
            if pre + f"mlp.gate_proj.{suffix}" in hf:
                sd[out + f"mlp.up.{suffix}"] = torch.cat(
                    (get(pre + f"mlp.gate_proj.{suffix}"), get(pre + f"mlp.up_proj.{suffix}"))
                )
                sd[out + f"mlp.down.{suffix}"] = get(pre + f"mlp.down_proj.{suffix}")
    sd["norm_f.weight"] = get("model.norm.weight")
    sd["lm_head.weight"] = hf.get("lm_head.weight", sd["tok_emb.weight"])
    return {k: v.contiguous() for k, v in sd.items()}
