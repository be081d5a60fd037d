"""Hugging Face interop (issue 12), offline with tiny random models: export -> from_pretrained gives
lmlab's logits and greedy generations; import of a saved random transformers model gives its logits;
the exported tokenizer gives lmlab's ids; what does not map is refused naming the part."""

from __future__ import annotations

import json
import pickle
import re
import sysconfig
from pathlib import Path

import pytest
import torch
import transformers  # noqa: E402  (the [hf] extra, in [dev]: a missing install fails, never skips)

from lmlab.config import build_config, to_dict  # noqa: E402
from lmlab.eval.generate import generate  # noqa: E402
from lmlab.interop import InteropError, mapping  # noqa: E402
from lmlab.interop.export import export, export_model, export_tokenizer, to_transformers  # noqa: E402
from lmlab.interop.imports import apply_init_from, config_from_hf, hydra_overrides, load_hf_into  # noqa: E402
from lmlab.model.transformer import build_model  # noqa: E402
from lmlab.tokenizers.hf import HFTokenizer  # noqa: E402
from lmlab.tokenizers.sentencepiece import SentencePieceConfig, SentencePieceTokenizer  # noqa: E402

V = 64
# qk_norm pinned off: the Llama/DeepSeek/GPT-2 cases must not turn into Qwen3 if the default recipe changes
SMALL = ["model=nano", "model.d_model=32", "model.n_head=4", "model.n_layer=2", "model.seq_len=32", "model.qk_norm=false"]
STDLIB = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights far from init (norm gains around 1, biases nonzero) so a mapping error shows in the logits."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1 and ("norm" in name or "ln" in name or "layernorm" in name) and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            elif p.dim() == 1:
                p.copy_(0.3 * noise)
            else:
                p.copy_(noise * 0.9 / p.shape[-1] ** 0.5)


EXPORTS = {
    "llama-gqa-interleaved": ["attention=gqa", "attention.n_kv_head=2"],
    "llama-mha-half-untied": ["attention=mha", "pos.layout=half", "model.tie_embeddings=false", "pos.base=500"],
    "llama-mqa-biases": ["attention=mqa", "attention.bias=true", "model.bias=true", "model.ffn_dim=40"],
    "qwen3-gqa-interleaved": ["attention=gqa", "attention.n_kv_head=2", "model.qk_norm=true"],
    "qwen3-mha-half-untied-bias": ["attention=mha", "pos.layout=half", "model.qk_norm=true", "model.tie_embeddings=false",
                                   "attention.bias=true", "model.norm_eps=1e-6", "model.head_dim=12"],
    "qwen3-mqa-interleaved": ["attention=mqa", "model.qk_norm=true", "pos.base=500"],
    "deepseek-mla-interleaved": ["attention=mla", "model.norm_eps=1e-6"],
    "deepseek-mla-qlora-half-bias": [
        "attention=mla", "model.norm_eps=1e-6", "attention.q_lora_rank=16", "pos.layout=half", "attention.bias=true",
        "model.tie_embeddings=false",
    ],
    "gpt2-biases": ["pos=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.bias=true", "attention.bias=true"],
    "gpt2-no-bias-untied": ["pos=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.tie_embeddings=false"],
}
FAMILY = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "deepseek": "DeepseekV3ForCausalLM", "gpt2": "GPT2LMHeadModel"}


def _lmlab(compose, overrides, seed=0):
    run = compose(SMALL + overrides)
    model = build_model(run, V).eval()
    randomize(model, seed)
    return run, model


@pytest.mark.parametrize("name", list(EXPORTS))
def test_export_from_pretrained_logits_equal(name, compose, tmp_path):
    run, model = _lmlab(compose, EXPORTS[name])
    export_model(model, run, str(tmp_path), V, eos_id=2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    assert type(hf).__name__ == FAMILY[name.split("-")[0]]
    x = torch.randint(0, V, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert ours.abs().max() > 1.0  # not a degenerate near-zero comparison
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_interleaved_layout_needs_the_permutation(compose, monkeypatch):
    """Negative control: without the per-head q/k row permutation, the interleaved export is wrong."""
    run, model = _lmlab(compose, EXPORTS["llama-gqa-interleaved"])
    monkeypatch.setattr(mapping, "rope_perm", lambda d: torch.arange(d))
    hf = to_transformers(model, run, V)
    x = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (hf(x).logits - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["llama-gqa-interleaved", "qwen3-gqa-interleaved", "deepseek-mla-interleaved",
                                  "gpt2-biases"])
def test_generate_greedy_equals_lmlab(name, compose):
    run, model = _lmlab(compose, EXPORTS[name], seed=5)
    hf = to_transformers(model, run, V, eos_id=V - 1)
    prompt = [5, 17, 3, 40]
    ours = list(generate(model, prompt, max_new_tokens=12, temperature=0.0))
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False, eos_token_id=None,
                      pad_token_id=0, min_new_tokens=12)
    assert out[0, len(prompt):].tolist() == ours
    assert len(set(ours)) > 1  # a constant output would not test the KV caches


@pytest.mark.parametrize("attn", [["attention=mha"], ["attention=gqa", "attention.n_kv_head=2"], ["attention=mqa"]])
@pytest.mark.parametrize("layout", ["interleaved", "half"])
def test_qk_norm_model_is_never_exported_as_llama(attn, layout, compose):
    """The bug: family() ignored model.qk_norm and wrote a Llama without the q/k norms."""
    run, model = _lmlab(compose, attn + [f"pos.layout={layout}", "model.qk_norm=true"])
    assert mapping.family(run) == "qwen3"
    hf = to_transformers(model, run, V)
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    x = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), atol=1e-5, rtol=0)
        # negative control: the same weights as a Llama (what was exported before) compute another function
        llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**mapping.hf_config_dict(run, V, "llama")))
        missing, _ = llama.load_state_dict(mapping.to_hf_state(model, run, "qwen3"), strict=False)
        assert not [k for k in missing if k != "lm_head.weight"]
        llama.tie_weights()
        assert (llama.eval()(x).logits - model(x)).abs().max() > 1e-3


def test_qk_norm_gains_need_the_rope_permutation(compose):
    """Negative control: with the interleaved layout, q/k norm gains left unpermuted give another function."""
    run, model = _lmlab(compose, EXPORTS["qwen3-gqa-interleaved"])
    hf = to_transformers(model, run, V)
    x = torch.randint(0, V, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for hf_layer, b in zip(hf.model.layers, model.blocks):
            hf_layer.self_attn.q_norm.weight.copy_(b.attn.q_norm.weight)
            hf_layer.self_attn.k_norm.weight.copy_(b.attn.k_norm.weight)
        assert (hf(x).logits - model(x)).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["qwen3-gqa-interleaved", "qwen3-mha-half-untied-bias"])
def test_qwen3_state_round_trip_in_the_run_layout(name, compose):
    """to_hf_state then from_hf_state with the same run is the identity (inverse permutation included)."""
    run, model = _lmlab(compose, EXPORTS[name])
    back = mapping.from_hf_state(mapping.to_hf_state(model, run, "qwen3"), run, "qwen3", run.model.n_layer)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("pos.") and ".attn.pos." not in k}
    assert set(back) == set(own)
    for k, v in own.items():
        assert torch.equal(back[k], v), k


def test_qwen3_config_has_no_sliding_window_and_shared_eps(compose):
    run, _ = _lmlab(compose, EXPORTS["qwen3-mha-half-untied-bias"])
    cfg = transformers.Qwen3Config(**mapping.hf_config_dict(run, V, "qwen3"))
    assert cfg.sliding_window is None and set(cfg.layer_types) == {"full_attention"}
    assert cfg.rms_norm_eps == 1e-6 and cfg.head_dim == 12 and cfg.attention_bias and not cfg.tie_word_embeddings


REFUSED = {
    "alibi": (["pos=alibi"], "pos.name=alibi"),
    "rope2d": (["pos=rope2d"], "pos.name=rope2d"),
    "vq": (["attention=vq", "pos=none"], "attention.name=vq"),
    "gelu-rope": (["model.mlp=gelu"], "model.mlp=gelu"),
    "layernorm-rope": (["model.norm=layernorm"], "model.norm=layernorm"),
    "mla-eps": (["attention=mla"], "model.norm_eps=1e-05"),
    "learned-rmsnorm": (["pos=learned"], "model.norm=rmsnorm"),
    "learned-gqa": (["pos=learned", "attention=gqa", "model.norm=layernorm"], "attention.name=gqa"),
    "qk_norm-learned": (["pos=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.qk_norm=true"],
                        "model.qk_norm"),
    "qk_norm-alibi": (["pos=alibi", "model.qk_norm=true"], "model.qk_norm"),
    "qk_norm-mlp-bias": (["model.qk_norm=true", "model.bias=true"], "model.bias=true"),
    "softcap-llama": (["model.logit_softcap=30"], "model.logit_softcap=30"),
    "softcap-qwen3": (["model.qk_norm=true", "model.logit_softcap=15"], "model.logit_softcap=15"),
    "softcap-mla": (["attention=mla", "model.norm_eps=1e-6", "model.logit_softcap=30"], "model.logit_softcap"),
    "softcap-gpt2": (["pos=learned", "model.norm=layernorm", "model.mlp=gelu_tanh", "model.logit_softcap=30"],
                     "model.logit_softcap"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_export_refuses_naming_the_part(name, compose):
    overrides, part = REFUSED[name]
    run = compose(SMALL + overrides)
    with pytest.raises(InteropError) as e:
        mapping.family(run)
    assert part in str(e.value) and "\n" not in str(e.value)


def test_export_refuses_qk_norm_with_mla(compose):
    """Config validation refuses mla + qk_norm already; family() refuses it too if a run gets past it."""
    run = compose(SMALL + ["attention=mla", "model.norm_eps=1e-6"])
    assert mapping.family(run) == "deepseek_v3"
    run.model.qk_norm = True
    with pytest.raises(InteropError, match="model.qk_norm"):
        mapping.family(run)


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------


def _hf_configs():
    T = transformers
    return {
        "llama": T.LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
                               rope_theta=500.0),
        "qwen2": T.Qwen2Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
        "qwen3": T.Qwen3Config(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, head_dim=12, attention_bias=True,
                               rms_norm_eps=1e-6, tie_word_embeddings=False, rope_parameters={"rope_type": "default",
                                                                                              "rope_theta": 500.0}),
        "gpt2": T.GPT2Config(vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64),
        "deepseek_v3": T.DeepseekV3Config(
            vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
            kv_lora_rank=16, q_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6,
            first_k_dense_replace=2, n_routed_experts=1, num_experts_per_tok=1, n_group=1, topk_group=1,
        ),
    }


def _save_random_hf(cfg, path) -> torch.nn.Module:
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    randomize(hf)
    hf.save_pretrained(str(path))
    return hf


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gpt2", "deepseek_v3"])
def test_import_logits_equal(kind, compose, tmp_path):
    hf = _save_random_hf(_hf_configs()[kind], tmp_path)
    overrides = [o for o in hydra_overrides(str(tmp_path)) if not o.startswith(("tokenizer", "model.init_from"))]
    # a composed recipe (qk_norm on, a softcap) is overridden by the checkpoint's architecture
    run = compose(["model.qk_norm=true", "model.logit_softcap=30"] + overrides + ["model.seq_len=32"])
    assert run.model.qk_norm == (kind == "qwen3") and run.model.logit_softcap is None
    model = build_model(run, V).eval()
    load_hf_into(model, str(tmp_path))
    x = torch.randint(0, V, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    assert theirs.abs().max() > 1.0
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_import_refuses_what_does_not_map(tmp_path):
    cfgs = _hf_configs()
    moe = cfgs["deepseek_v3"]
    moe.first_k_dense_replace = 1
    cases = {
        "first_k_dense_replace=1": moe,
        "rope_type=llama3": transformers.LlamaConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=8,
            rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 64}),
        "use_sliding_window=True": transformers.Qwen3Config(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=1, intermediate_size=8, head_dim=8,
            use_sliding_window=True, sliding_window=16, max_window_layers=0),
        "model_type=mistral": transformers.MistralConfig(hidden_size=32, num_attention_heads=4,
                                                         num_hidden_layers=1, intermediate_size=8),
    }
    for part, cfg in cases.items():
        d = tmp_path / part.replace("=", "_")
        cfg.save_pretrained(str(d))
        with pytest.raises(InteropError, match=re.escape(part)):
            config_from_hf(str(d))
    with pytest.raises(InteropError, match="no config.json"):
        config_from_hf(str(tmp_path / "nowhere"))


def test_load_hf_into_refuses_a_mismatched_model(compose, tmp_path):
    _save_random_hf(_hf_configs()["llama"], tmp_path)
    model = build_model(compose(SMALL + ["attention=gqa", "attention.n_kv_head=2"]), V)
    with pytest.raises(InteropError, match="shape"):
        load_hf_into(model, str(tmp_path))


# --------------------------------------------------------------------------------------------
# tokenizer
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["unigram", "bpe"])
def sp_tok(request, cache_dir):
    texts = [p.read_text(errors="replace") for p in STDLIB[:20]]
    cfg = SentencePieceConfig(vocab_size=600, model_type=request.param)
    return SentencePieceTokenizer.build(cfg, lambda: texts, cache_dir)


def _held_out() -> list[str]:
    texts = [p.read_text(errors="replace")[:4000] for p in STDLIB[40:52]]
    return texts + ["中文 and ünïcödé 🙂 x", " lead", "\x00\ttab\r\n", "hello world\n\n", "trail "]


def test_tokenizer_round_trip_identical_ids(sp_tok, tmp_path):
    export_tokenizer(sp_tok, str(tmp_path))
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    for text in _held_out():
        ids = sp_tok.encode(text)
        assert hf.decode(ids) == text  # decoding: exact on every text
        # ids: identical except where SentencePiece breaks an exact score tie between two orders of
        # the same whitespace-only pieces by float32 rounding (documented); runs collapsed here
        plain = re.sub(r"[ \t]{2,}", " ", text)
        assert hf(plain, add_special_tokens=False)["input_ids"] == sp_tok.encode(plain)
    wrapped = HFTokenizer.from_dir(str(tmp_path))
    assert wrapped.bytes_table() == sp_tok.bytes_table() and wrapped.lossless
    assert pickle.loads(pickle.dumps(wrapped)).encode("to be or not") == sp_tok.encode("to be or not")


def test_hf_tokenizer_counts_real_bytes_for_byte_level_bpe(tmp_path):
    """A GPT-2-style byte-level BPE: piece bytes concatenate to the UTF-8 input."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([p.read_text(errors="replace") for p in STDLIB[:5]], trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.save_pretrained(str(tmp_path))
    wrapped = HFTokenizer.from_dir(str(tmp_path))
    text = "héllo wörld  🙂\n\tx"
    ids = wrapped.encode(text)
    assert wrapped.decode_bytes(ids) == text.encode("utf-8") and wrapped.lossless
    assert wrapped.piece_bytes(wrapped.eos_id) == b""


# --------------------------------------------------------------------------------------------
# end to end: checkpoint -> export dir -> transformers; transformers dir -> lmlab config + weights
# --------------------------------------------------------------------------------------------


def _fake_checkpoint(run, model, tokenizer, path: Path) -> None:
    """A weights-only checkpoint in the format the one loader reads."""
    from lmlab.train.checkpoint import save_weights_checkpoint

    save_weights_checkpoint(path, run, model, tokenizer)


@pytest.mark.parametrize("fam", ["llama", "qwen3"])
def test_export_checkpoint_end_to_end(fam, compose, sp_tok, tmp_path):
    run = compose(SMALL + ["attention=gqa", "attention.n_kv_head=2", f"tokenizer.vocab_size={sp_tok.vocab_size}",
                           f"model.qk_norm={fam == 'qwen3'}"])
    model = build_model(run, sp_tok.vocab_size).eval()
    randomize(model)
    ckpt_dir = tmp_path / "run" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    _fake_checkpoint(run, model, sp_tok, ckpt_dir / "last.ckpt")
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"step": 7, "val_bpb": 2.5}))
    out = tmp_path / "hf"
    assert export(str(ckpt_dir / "last.ckpt"), str(out))["family"] == fam
    card = (out / "README.md").read_text()
    assert "val_bpb = 2.5" in card and "steps: 7" in card
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert type(hf).__name__ == FAMILY[fam] and f"# {run.run_name}" in card and FAMILY[fam] in card
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    text = "def main(argv):\n    return 0\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids == sp_tok.encode(text)
    with torch.no_grad():
        torch.testing.assert_close(hf(torch.tensor([ids])).logits, model(torch.tensor([ids])), atol=1e-5, rtol=0)
    # and back: model.init_from=DIR with tokenizer=hf rebuilds the same model in lmlab
    raw = compose([f"model.init_from={out}", "tokenizer=hf"], validate=False)
    from omegaconf import OmegaConf

    run2 = build_config(apply_init_from(OmegaConf.to_container(raw, resolve=True)))
    assert run2.tokenizer.path == str(out) and run2.pos.layout == "half"
    assert run2.model.qk_norm == (fam == "qwen3")
    tok2 = HFTokenizer.build(run2.tokenizer, lambda: [], "")
    model2 = build_model(run2, tok2.vocab_size).eval()
    load_hf_into(model2, str(out))
    with torch.no_grad():
        torch.testing.assert_close(model2(torch.tensor([ids])), model(torch.tensor([ids])), atol=1e-5, rtol=0)
    # the training path: build_config applies the dir's architecture, the LM module loads its weights
    run3 = build_config(OmegaConf.to_container(raw, resolve=True))
    assert run3.pos.layout == "half" and run3.model.d_model == run.model.d_model
    from lmlab.tasks.lm import LMModule

    module = LMModule(run3, tok2, torch.ones(tok2.vocab_size))
    with torch.no_grad():
        torch.testing.assert_close(module.model.eval()(torch.tensor([ids])), model(torch.tensor([ids])),
                                   atol=1e-5, rtol=0)


def test_export_refusal_writes_nothing(compose, sp_tok, tmp_path):
    run = compose(SMALL + ["pos=alibi", f"tokenizer.vocab_size={sp_tok.vocab_size}"])
    model = build_model(run, sp_tok.vocab_size)
    _fake_checkpoint(run, model, sp_tok, tmp_path / "last.ckpt")
    with pytest.raises(InteropError, match="pos.name=alibi"):
        export(str(tmp_path / "last.ckpt"), str(tmp_path / "hf"))
    assert not (tmp_path / "hf").exists() and not (tmp_path / "hf.tmp-export").exists()


def test_gpt2_model_options(compose):
    """norm/bias/mlp/ffn_dim build what they say; defaults keep the bias-free RMSNorm SwiGLU model."""
    default = build_model(compose(SMALL), V)
    names = dict(default.named_parameters())
    assert not any(n.endswith(".bias") for n in names)
    assert names["blocks.0.mlp.up.weight"].shape == (2 * 96, 32)  # 2/3 * 4 * 32 rounded up to 32, x2
    g = build_model(compose(SMALL + ["pos=learned", "model.norm=layernorm", "model.mlp=gelu_tanh",
                                     "model.bias=true", "model.ffn_dim=40"]), V)
    assert isinstance(g.blocks[0].norm1, torch.nn.LayerNorm) and g.blocks[0].norm1.bias is not None
    assert g.blocks[0].mlp.up.weight.shape == (40, 32) and g.blocks[0].mlp.down.bias.shape == (32,)
    x = torch.randn(3, 32)
    g.blocks[0].mlp.kind = "gelu"
    exact = g.blocks[0].mlp.down(torch.nn.functional.gelu(g.blocks[0].mlp.up(x)))
    assert torch.allclose(g.blocks[0].mlp(x), exact)
    g.blocks[0].mlp.kind = "gelu_tanh"
    assert not torch.equal(g.blocks[0].mlp(x), exact)  # the tanh form is a different function
    with pytest.raises(Exception, match="model.ffn_dim=0"):
        compose(SMALL + ["model.ffn_dim=0"])


def test_checkpoints_written_before_the_new_model_keys_still_resume(compose):
    from lmlab.train.run import _check_compatible

    cur = to_dict(compose(SMALL))
    new_keys = ("norm", "bias", "ffn_dim", "init_from")
    before = {**cur, "model": {k: v for k, v in cur["model"].items() if k not in new_keys}}
    _check_compatible(before, cur, "old.ckpt")  # absent keys are the defaults: same model
    with pytest.raises(ValueError, match="model.norm: checkpoint 'layernorm'"):
        _check_compatible({**cur, "model": {**cur["model"], "norm": "layernorm"}}, cur, "x.ckpt")
