"""Export an lmlab checkpoint as a directory ``transformers`` loads (``AutoModelForCausalLM`` and
``AutoTokenizer.from_pretrained(DIR)``), with a model card.

Guarantees (tests/test_interop.py, tiny random models, float32):
- the exported model's logits equal lmlab's to 1e-5 for every supported family (Llama for
  mha|gqa|mqa + rope in both layouts, Qwen3 for the same with ``model.qk_norm``, DeepSeek-V3 dense
  for mla, GPT-2 for learned + layernorm + gelu_tanh), tied or untied, and its greedy ``generate``
  equals lmlab's;
- every other configuration is refused before anything is written, naming the part no peer
  architecture has (``lmlab.interop.mapping.family``);
- the tokenizer (SentencePiece unigram or BPE, byte fallback, identity normalisation, no dummy
  prefix) is written as a ``tokenizer.json`` built with the ``tokenizers`` library, so
  ``AutoTokenizer`` gives the same ids as lmlab's deterministic ``encode`` and decodes them back to
  the same text. Not guaranteed: (1) unigram models on long whitespace runs, where two orders of the
  same whitespace pieces tie exactly and SentencePiece breaks the tie by float32 rounding while
  ``tokenizers`` (float64) keeps the first -- same bytes, same piece multiset, other ids order; BPE
  models are exact; (2) input containing the literal strings of special tokens (``<s>``, ``</s>``,
  ``<unk>``), which ``transformers`` treats as special and SentencePiece as text.

``transformers`` and ``tokenizers`` come with the ``[hf]`` extra.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from lmlab.interop import InteropError
from lmlab.interop.mapping import family, hf_config_dict, to_hf_state

CONFIG_CLASSES = {"llama": "LlamaConfig", "qwen3": "Qwen3Config", "deepseek_v3": "DeepseekV3Config", "gpt2": "GPT2Config"}


def load_lmlab(ckpt_path: str):
    """(model, tokenizer, run) from an lmlab checkpoint file or run directory (the commands' one loader)."""
    from lmlab.cli import load_checkpoint

    return load_checkpoint(ckpt_path)


def to_transformers(model, run, vocab_size: int, eos_id: int | None = None, bos_id: int | None = None):
    """An in-memory ``transformers`` model (eval mode, float32) computing what lmlab ``model`` computes."""
    import transformers

    fam = family(run)
    special = {"eos_token_id": eos_id, "bos_token_id": bos_id if bos_id is not None else eos_id, "pad_token_id": None}
    cfg = getattr(transformers, CONFIG_CLASSES[fam])(**hf_config_dict(run, vocab_size, fam), **special)
    if model.tok_emb.weight.shape[0] != vocab_size:
        raise InteropError(f"vocab_size={vocab_size} does not match the model's {model.tok_emb.weight.shape[0]}")
    hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    state = to_hf_state(model, run, fam)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    if missing or unexpected:  # a mapping bug, not a user error: keep the detail
        raise RuntimeError(f"weight mapping for {fam} is incomplete: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        hf.tie_weights()
    return hf.eval()


def export_model(model, run, out_dir: str, vocab_size: int, eos_id: int | None = None) -> str:
    """Write the model (config.json, safetensors weights, generation config) to ``out_dir``; -> family."""
    hf = to_transformers(model, run, vocab_size, eos_id=eos_id)
    hf.save_pretrained(out_dir)
    return family(run)


def export_tokenizer(tokenizer, out_dir: str) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` (and the SentencePiece model as tokenizer.model)."""
    from lmlab.tokenizers.sentencepiece import SentencePieceTokenizer

    if not isinstance(tokenizer, SentencePieceTokenizer):
        raise InteropError(
            f"tokenizer.name={getattr(tokenizer.cfg, 'name', type(tokenizer).__name__)}: only the sentencepiece"
            " tokenizer has a transformers equivalent (use tokenizer=sentencepiece to export)"
        )
    fast = sentencepiece_to_tokenizers(tokenizer)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save(str(out / "tokenizer.json"))
    (out / "tokenizer.model").write_bytes(tokenizer._proto)
    sp = tokenizer.sp
    special = {}
    for key, i in (("unk_token", sp.unk_id()), ("bos_token", sp.bos_id()), ("eos_token", sp.eos_id())):
        if i >= 0:
            special[key] = sp.id_to_piece(i)
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # read tokenizer.json as is: no re-conversion
        **special,
        "add_bos_token": False,  # lmlab's encode adds no BOS; documents end with EOS in training
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def sentencepiece_to_tokenizers(tokenizer):
    """A ``tokenizers.Tokenizer`` segmenting like lmlab's SentencePiece model (deterministic encode).

    SentencePiece with identity normalisation and no dummy prefix only escapes spaces as U+2581, so
    the normaliser is that one replacement and there is no pre-tokeniser; the model is the same
    unigram vocabulary with scores (or the same BPE merges) with byte fallback. Byte and control
    pieces get scores that never win a segmentation, as SentencePiece never matches them in text.
    """
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = pb.ModelProto()
    proto.ParseFromString(tokenizer._proto)
    pieces = proto.pieces
    T = pb.ModelProto.SentencePiece.Type
    unk_id = proto.trainer_spec.unk_id
    if proto.trainer_spec.model_type == pb.TrainerSpec.UNIGRAM:
        vocab = []
        for p in pieces:
            score = p.score if p.type in (T.NORMAL, T.USER_DEFINED) else -1e9
            vocab.append((p.piece, score))
        model = models.Unigram(vocab, unk_id=unk_id, byte_fallback=True)
    elif proto.trainer_spec.model_type == pb.TrainerSpec.BPE:
        from transformers.tokenization_utils_sentencepiece import generate_merges

        # merges ordered by piece score, as SentencePiece applies them
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        merges = generate_merges(vocab, {p.piece: p.score for p in pieces})
        model = models.BPE(vocab, merges, unk_token=pieces[unk_id].piece, byte_fallback=True, fuse_unk=True)
    else:
        raise InteropError(f"tokenizer.model_type={proto.trainer_spec.model_type}: only unigram and bpe export")
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    specials = [AddedToken(p.piece, special=True, normalized=False) for p in pieces if p.type in (T.CONTROL, T.UNKNOWN)]
    tok.add_special_tokens(specials)
    return tok


def model_card(run, fam: str, run_dir: Path | None, steps: int | None) -> str:
    """README.md text: what the model is, how it was trained, its validation bits per byte."""
    from lmlab.config import to_dict

    summary = {}
    if run_dir is not None and (run_dir / "summary.json").exists():
        summary = json.loads((run_dir / "summary.json").read_text())
    bpb = {k: v for k, v in summary.items() if "bpb" in k or "bits" in k}
    cfg = to_dict(run)
    data = cfg.get("data") or {}
    arch = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM", "gpt2": "GPT2LMHeadModel"}[fam]
    lines = [
        "---", "library_name: transformers", "tags: [lmlab]", "---", "",
        f"# {run.run_name} (exported from lmlab)", "",
        f"A {arch} converted from an lmlab checkpoint by `lmlab.interop.export`; it computes the same"
        " function as the lmlab model (checked to 1e-5 in float32 by lmlab's tests).", "",
        "## Training", "",
        f"- data: `{data.get('name')}` ({json.dumps({k: v for k, v in data.items() if k != 'name'})})",
        f"- steps: {steps if steps is not None else summary.get('step', 'unknown')}",
        f"- tokenizer: {json.dumps(cfg.get('tokenizer'))}",
    ]
    if bpb:
        lines.append("- validation: " + ", ".join(f"{k} = {v}" for k, v in bpb.items()))
    else:
        lines.append("- validation bits per byte: not recorded (no summary.json beside the checkpoint)")
    lines += ["", "## lmlab config", "", "```json", json.dumps(cfg, indent=1, default=str), "```", "",
              "## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
              "tok = AutoTokenizer.from_pretrained(DIR)", "model = AutoModelForCausalLM.from_pretrained(DIR)",
              "```", "", "The tokenizer adds no BOS; lmlab documents are separated by the EOS token.", ""]
    return "\n".join(lines)


def _find_run_dir(ckpt_path: Path) -> Path | None:
    for d in (ckpt_path.parent, ckpt_path.parent.parent):
        if (d / "summary.json").exists():
            return d
    return None


def export(ckpt_path: str, out_dir: str) -> dict:
    """Export lmlab checkpoint ``ckpt_path`` to ``out_dir`` (a transformers model + tokenizer + README.md).

    Refuses (InteropError, before writing) configurations without a peer architecture. Returns
    {"family", "out_dir"}. CLI: ``python -m lmlab export ckpt=... out=DIR`` (wired in lmlab/cli).
    """
    model, tokenizer, run = load_lmlab(ckpt_path)
    if tokenizer is None:
        raise InteropError(f"{ckpt_path}: an image-text run has no text tokenizer and no peer architecture")
    fam = family(run)  # refuse before writing anything
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp-export")
    shutil.rmtree(tmp, ignore_errors=True)
    try:  # written beside, then renamed: a refusal or crash never leaves a half-written DIR
        export_tokenizer(tokenizer, str(tmp))  # first: it may refuse (tokenizer without a peer)
        export_model(model, run, str(tmp), tokenizer.vocab_size, eos_id=tokenizer.eos_id)
        (tmp / "README.md").write_text(model_card(run, fam, _find_run_dir(Path(ckpt_path)), None))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {"family": fam, "out_dir": str(out)}
