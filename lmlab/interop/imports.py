"""Start lmlab models from a local ``transformers`` checkpoint directory (``model.init_from=DIR``).

Families: Llama, Qwen2, Qwen3 (-> ``model.qk_norm=true``), DeepSeek-V3 (dense layers only), GPT-2.
No hub access: ``DIR`` is a local directory holding ``config.json`` and ``*.safetensors`` (or
``pytorch_model.bin``) weights.

- ``config_from_hf(DIR)`` -> the lmlab config overrides (a nested dict over the ``model``,
  ``attention``, ``pos`` and ``tokenizer`` groups) describing the same architecture, or an
  ``InteropError`` naming what lmlab has no equivalent of (mixture-of-experts layers, RoPE frequency
  scaling, sliding windows (Qwen2, Qwen3), DeepSeek-V3 with rms_norm_eps != 1e-6, ...).
- ``apply_init_from(cfg)`` merges those overrides into a plain config dict whose ``model.init_from`` is
  set (the architecture keys of the checkpoint win over the composed ones); call it on Hydra's
  container before ``lmlab.config.build_config``.
- ``load_hf_into(model, DIR)`` copies the weights into an lmlab ``Transformer`` built from that config
  (strict: every lmlab parameter is set, every shape checked).

Guarantee (tests/test_interop.py): for a saved random model of each family, lmlab's logits equal the
``transformers`` model's to 1e-5 in float32. Imports use ``pos.layout=half`` (rotate-half, the
layout transformers stores) except DeepSeek-V3 with ``rope_interleave``, whose layout is lmlab's
default ``interleaved``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import torch

from lmlab.interop import InteropError
from lmlab.interop.mapping import from_hf_state

SUPPORTED = ("llama", "qwen2", "qwen3", "deepseek_v3", "gpt2")
# every import sets these model keys, so a composed recipe (qk_norm=true, a softcap) never adds a
# module or a transformation the checkpoint does not have
_NO_RECIPE = {"qk_norm": False, "logit_softcap": None}


def _hf_config(path: str):
    d = Path(path)
    if not (d / "config.json").is_file():
        raise InteropError(f"model.init_from={path}: no config.json there (a local transformers checkpoint dir)")
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(d), local_files_only=True)


def _rope(cfg, path: str) -> dict:
    params = getattr(cfg, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        raise InteropError(f"{path}: rope_type={kind}: lmlab's RoPE has no frequency scaling (only 'default')")
    if params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) not in (1, 1.0, None):
        raise InteropError(f"{path}: partial_rotary_factor: lmlab's pos=rope rotates the whole head")
    return {"name": "rope", "base": float(theta)}


def config_from_hf(path: str) -> dict:
    """Nested lmlab overrides {"model": {...}, "attention": {...}, "pos": {...}, "tokenizer": {...}}."""
    cfg = _hf_config(path)
    mt = cfg.model_type
    if mt not in SUPPORTED:
        raise InteropError(f"{path}: model_type={mt} has no lmlab equivalent (supported: {', '.join(SUPPORTED)})")
    tok = {"name": "hf", "path": str(path)}
    if mt == "gpt2":
        act = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}.get(cfg.activation_function)
        if act is None:
            raise InteropError(f"{path}: activation_function={cfg.activation_function}: lmlab has gelu and gelu_tanh")
        if cfg.scale_attn_by_inverse_layer_idx or not cfg.scale_attn_weights:
            raise InteropError(f"{path}: GPT-2 attention scaling variants: lmlab scales by 1/sqrt(head_dim) only")
        model = {
            "d_model": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "head_dim": None,
            "mlp": act, "ffn_dim": cfg.n_inner or 4 * cfg.n_embd, "norm": "layernorm", "bias": True,
            "norm_eps": float(cfg.layer_norm_epsilon), "tie_embeddings": bool(cfg.tie_word_embeddings),
            **_NO_RECIPE,
        }
        return {"model": {**model, "init_from": str(path)}, "attention": {"name": "mha", "bias": True},
                "pos": {"name": "learned", "max_len": cfg.n_positions}, "tokenizer": tok}
    if getattr(cfg, "hidden_act", "silu") != "silu":
        raise InteropError(f"{path}: hidden_act={cfg.hidden_act}: lmlab's gated MLP is SwiGLU (silu)")
    pos = _rope(cfg, path)
    model = {
        "d_model": cfg.hidden_size, "n_layer": cfg.num_hidden_layers, "n_head": cfg.num_attention_heads,
        "mlp": "swiglu", "ffn_dim": cfg.intermediate_size, "norm": "rmsnorm",
        "norm_eps": float(cfg.rms_norm_eps), "tie_embeddings": bool(cfg.tie_word_embeddings),
        "bias": bool(getattr(cfg, "mlp_bias", False)), "init_from": str(path), **_NO_RECIPE,
    }
    if mt == "deepseek_v3":
        if cfg.first_k_dense_replace < cfg.num_hidden_layers:
            raise InteropError(
                f"{path}: first_k_dense_replace={cfg.first_k_dense_replace} < num_hidden_layers="
                f"{cfg.num_hidden_layers}: mixture-of-experts layers have no lmlab equivalent (dense only)"
            )
        if float(cfg.rms_norm_eps) != 1e-6:
            raise InteropError(
                f"{path}: rms_norm_eps={cfg.rms_norm_eps}: DeepSeek-V3's MLA norms use 1e-6 but lmlab's use"
                " model.norm_eps, which must then also be the layer norms' eps"
            )
        attention = {
            "name": "mla", "bias": bool(cfg.attention_bias), "kv_lora_rank": cfg.kv_lora_rank,
            "q_lora_rank": cfg.q_lora_rank, "rope_head_dim": cfg.qk_rope_head_dim,
            "nope_head_dim": cfg.qk_nope_head_dim, "v_head_dim": cfg.v_head_dim,
        }
        model["head_dim"] = None
        pos["layout"] = "interleaved" if getattr(cfg, "rope_interleave", True) else "half"
        return {"model": model, "attention": attention, "pos": pos, "tokenizer": tok}
    if mt == "qwen2":
        if getattr(cfg, "use_sliding_window", False):
            raise InteropError(f"{path}: use_sliding_window=true: lmlab attention has no sliding window")
        attn_bias = True  # q/k/v biases; o has none, which lmlab holds as a zero o_proj bias
    elif mt == "qwen3":
        types = set(getattr(cfg, "layer_types", None) or ["full_attention"])
        if getattr(cfg, "use_sliding_window", False) or types != {"full_attention"}:
            raise InteropError(
                f"{path}: use_sliding_window={cfg.use_sliding_window} (layer_types {sorted(types)}): lmlab"
                " attention has no sliding window"
            )
        attn_bias = bool(cfg.attention_bias)
        model["qk_norm"] = True  # q_norm/k_norm: RMSNorm(head_dim) before RoPE, eps rms_norm_eps
    else:
        attn_bias = bool(cfg.attention_bias)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    model["head_dim"] = head_dim
    n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
    attention = {"name": "mha", "bias": attn_bias} if n_kv == cfg.num_attention_heads else (
        {"name": "gqa", "n_kv_head": n_kv, "bias": attn_bias})
    pos["layout"] = "half"  # transformers stores rotate-half weights: no permutation needed
    return {"model": model, "attention": attention, "pos": pos, "tokenizer": tok}


def hydra_overrides(path: str) -> list[str]:
    """``config_from_hf`` as Hydra command-line overrides (group choices first), e.g. for a sweep file."""
    o = config_from_hf(path)
    out = [f"attention={o['attention']['name']}", f"pos={o['pos']['name']}", "tokenizer=hf"]
    for group, d in o.items():
        for k, v in d.items():
            if k != "name":
                out.append(f"{group}.{k}={'null' if v is None else json.dumps(v) if isinstance(v, str) else v}")
    return out


def apply_init_from(cfg: dict) -> dict:
    """A copy of config dict ``cfg`` with the architecture of ``cfg['model']['init_from']`` merged in.

    Groups whose variant changes (e.g. attention mha -> mla) are replaced, so no key of the old
    variant is left behind; within a kept variant, the checkpoint's keys overwrite. No-op when unset.
    """
    path = (cfg.get("model") or {}).get("init_from")
    if not path:
        return cfg
    out = dict(cfg)
    for group, vals in config_from_hf(path).items():
        old = dict(out.get(group) or {})
        if group != "model" and old.get("name") != vals.get("name"):
            old = {}
        out[group] = {**old, **vals}
    max_len = out["pos"].get("max_len") if out["pos"].get("name") == "learned" else None
    if max_len and out["model"].get("seq_len", 0) > max_len:  # a learned table cannot go further
        out["model"]["seq_len"] = max_len
    return out


def _read_weights(path: str) -> dict[str, torch.Tensor]:
    d = Path(path)
    files = sorted(d.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(load_file(str(f)))
        return sd
    bins = sorted(d.glob("pytorch_model*.bin"))
    if not bins:
        raise InteropError(f"model.init_from={path}: no *.safetensors or pytorch_model*.bin weights there")
    sd = {}
    for f in bins:
        sd.update(torch.load(str(f), map_location="cpu", weights_only=True))
    return sd


def load_hf_into(model, path: str) -> None:
    """Copy the weights of the transformers checkpoint at ``path`` into lmlab ``model`` (in place).

    ``model`` must have been built from ``config_from_hf(path)`` (any vocabulary of the same size);
    a shape or key mismatch is an InteropError naming the first differing parameter.
    """
    cfg = _hf_config(path)
    fam = {"qwen2": "llama"}.get(cfg.model_type, cfg.model_type)
    if fam not in ("llama", "qwen3", "deepseek_v3", "gpt2"):
        raise InteropError(f"{path}: model_type={cfg.model_type} has no lmlab equivalent")
    view = SimpleNamespace(model=model.cfg, attention=model.blocks[0].attn.cfg, pos=model.pos.cfg)
    hf = {k.removeprefix("_orig_mod."): v for k, v in _read_weights(path).items()}
    if fam == "gpt2" and not any(k.startswith("transformer.") for k in hf):  # GPT2Model saves without prefix
        hf = {("transformer." + k if not k.startswith("lm_head") else k): v for k, v in hf.items()}
    try:
        sd = from_hf_state(hf, view, fam, model.cfg.n_layer)
    except KeyError as e:
        raise InteropError(f"{path}: weight {e} missing (does config.json match the weights?)") from None
    own = model.state_dict()
    for k in own:  # the shared position module also appears under every layer
        if ".attn.pos." in k:
            src = "pos." + k.split(".attn.pos.", 1)[1]
            if src in sd:
                sd[k] = sd[src]
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise InteropError(
                f"{path}: {k} has shape {tuple(v.shape)} there but {tuple(own[k].shape)} in the lmlab model"
                " (build it from lmlab.interop.imports.config_from_hf)"
            )
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if missing or unexpected:
        raise InteropError(
            f"{path}: lmlab parameter(s) {missing[:3]} not in the checkpoint, checkpoint weight(s) {unexpected[:3]}"
            " not in the lmlab model (build it from lmlab.interop.imports.config_from_hf)"
        )
    with torch.no_grad():
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()})
