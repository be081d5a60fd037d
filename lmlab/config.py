"""Typed run configuration, built from Hydra's composed config and validated before any work.

Hydra composes yaml files into an untyped tree; ``build_config`` turns it into the dataclasses below.
Groups whose shape depends on the chosen variant (attention, pos, tokenizer, data) take their
dataclass from the variant's registered class (``cls.Config``), so each variant owns its keys.

One validation pass collects *every* problem -- unknown keys, wrong types, illegal combinations
(each config's ``check(run)`` method) -- and raises a single ``ConfigError`` naming the keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from lmlab import registry
from lmlab.errors import LmlabError


class ConfigError(LmlabError, ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        n = len(problems)
        items = "\n  - ".join(problems)
        super().__init__(f"invalid config ({n} problem{'' if n == 1 else 's'}):\n  - {items}")


# --------------------------------------------------------------------------------------------
# Schemas of the fixed groups. Variant groups are declared with ``variant(REGISTRY)``.
# --------------------------------------------------------------------------------------------


def variant(reg: registry.Registry, optional: bool = False) -> Any:
    """A variant-group field; ``optional``: null is a valid value (the groups themselves are required)."""
    return field(default=None, metadata={"registry": reg, "optional": optional})


@dataclass
class ModelConfig:
    """Decoder-only Transformer sizes; vocab_size comes from the tokenizer at build time.

    Defaults are conf/model/micro.yaml's (the default size); tests/test_defaults.py fails on any drift
    between a yaml and its dataclass."""

    d_model: int = 256
    n_layer: int = 3
    n_head: int = 4
    head_dim: Optional[int] = None  # null: d_model // n_head (resolved at construction)
    mlp: Literal["swiglu", "gelu", "gelu_tanh", "relu2"] = "swiglu"  # gelu: exact erf; gelu_tanh: GPT-2's; relu2: relu(x)^2
    mlp_ratio: float = 4.0  # hidden = ratio*d (gelu, relu2) or 2/3*ratio*d rounded up to 32 (swiglu)
    ffn_dim: Optional[int] = None  # explicit MLP hidden width; null: the mlp_ratio rule above
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    bias: bool = False  # biases in the MLP linears and LayerNorm (attention: attention.bias)
    init_from: Optional[str] = None  # a local transformers checkpoint dir (lmlab.interop.imports)
    dropout: float = 0.0
    tie_embeddings: bool = True
    seq_len: int = 128
    norm_eps: float = 1e-5
    init_std: float = 0.02
    # RMSNorm on each head's q and k before rotation: true (refused by variants without per-head keys:
    # mla, vq), false, or auto (on where the attention variant has per-head keys; resolved at start-up,
    # so the saved config says true or false)
    qk_norm: Union[bool, Literal["auto"]] = "auto"
    logit_softcap: Optional[float] = None  # logits -> c * tanh(logits / c); null: off

    def __post_init__(self):
        # head_dim: null means d_model // n_head, filled in here so that every reader (and the saved
        # config) sees the number; whether it was derived is kept for the divisibility check.
        self.head_dim_derived = self.head_dim is None
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.d_model, self.n_head))
        if self.head_dim is None and ints and self.n_head > 0:
            self.head_dim = self.d_model // self.n_head

    def check(self, run: RunConfig) -> list[str]:
        p = []
        for k in ("d_model", "n_layer", "n_head", "seq_len"):
            if isinstance(getattr(self, k), int) and getattr(self, k) <= 0:
                p.append(f"model.{k}={getattr(self, k)} must be positive")
        ints = all(isinstance(v, int) for v in (self.d_model, self.n_head))
        if ints and self.head_dim_derived and self.n_head > 0 and self.d_model % self.n_head:
            p.append(
                f"model.n_head={self.n_head} does not divide model.d_model={self.d_model}"
                " (set model.head_dim explicitly, or pick a divisor)"
            )
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"model.dropout={self.dropout} must be in [0, 1)")
        if isinstance(self.ffn_dim, int) and self.ffn_dim <= 0:
            p.append(f"model.ffn_dim={self.ffn_dim} must be positive (or null for the mlp_ratio rule)")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            p.append(f"model.logit_softcap={self.logit_softcap} must be positive or null (off)")
        return p

    def resolve(self, run: RunConfig) -> None:
        """qk_norm=auto -> true where the attention variant normalises per-head keys, else false."""
        if self.qk_norm == "auto":
            self.qk_norm = getattr(run.attention, "qk_norm_refusal", None) is None


@dataclass
class OptimConfig:
    """lmlab.optim: AdamW, or Muon for hidden matrices + AdamW for the rest; cosine or wsd schedule."""

    name: Literal["adamw", "muon"] = "muon"
    lr: float = 3e-3  # AdamW's lr (with muon: embeddings, heads, gains, biases)
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 30
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio at trainer.max_steps
    grad_clip: float = 1.0
    schedule: Literal["cosine", "wsd"] = "cosine"  # wsd: warmup, constant, decay over the last decay_frac
    decay_frac: float = 0.2  # wsd only
    decay_shape: Literal["linear", "sqrt"] = "linear"  # wsd only: 1 - progress or 1 - sqrt(progress)
    muon_lr: float = 0.02  # muon only: torch.optim.Muon for 2-D weights inside the blocks
    muon_momentum: float = 0.95
    muon_weight_decay: float = 0.0
    muon_adjust_lr: Literal["original", "match_rms_adamw"] = "original"  # torch's adjust_lr_fn

    def check(self, run: RunConfig) -> list[str]:
        p = []
        if self.lr <= 0:
            p.append(f"optim.lr={self.lr} must be positive")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            p.append(f"optim.betas={self.betas} must be two numbers in [0, 1)")
        if self.warmup_steps < 0:
            p.append(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        p.extend(self._check_recipe(run))
        return p

    def _check_recipe(self, run: RunConfig) -> list[str]:
        p = []
        if not 0.0 < self.decay_frac <= 1.0:
            p.append(f"optim.decay_frac={self.decay_frac} must be in (0, 1]")
        elif self.schedule == "wsd" and isinstance(getattr(run.trainer, "max_steps", None), int):
            decay = int(round(self.decay_frac * run.trainer.max_steps))
            if self.warmup_steps > run.trainer.max_steps - decay:
                p.append(
                    f"optim.warmup_steps={self.warmup_steps} runs into the decay of optim.schedule=wsd"
                    f" (the last {decay} of trainer.max_steps={run.trainer.max_steps}; optim.decay_frac)"
                )
        if self.muon_lr <= 0:
            p.append(f"optim.muon_lr={self.muon_lr} must be positive")
        if not 0.0 <= self.muon_momentum < 1.0:
            p.append(f"optim.muon_momentum={self.muon_momentum} must be in [0, 1)")
        return p


@dataclass
class EarlyStopConfig:
    """Stop when val bits/byte has not improved by ``min_delta`` for ``patience`` validations."""

    enabled: bool = False
    patience: int = 3  # validations (trainer.val_every steps apart) without improvement
    min_delta: float = 0.0  # an improvement smaller than this does not count
    monitor: str = "val/bpb"

    def check(self, run: RunConfig) -> list[str]:
        p = []
        if self.patience < 1:
            p.append(f"trainer.early_stop.patience={self.patience} must be >= 1")
        if self.min_delta < 0:
            p.append(f"trainer.early_stop.min_delta={self.min_delta} must be >= 0")
        return p


# Lightning precision values lmlab accepts (the same names as Lightning's; aliases such as "bf16" are not)
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true", "16-mixed", "16-true", "64-true")


@dataclass
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 300
    val_every: int = 100  # steps between validations (and checkpoints)
    limit_val_batches: int = 40
    log_every: int = 10
    keep_last: int = 2  # checkpoints kept (the k newest complete ones)
    num_threads: Optional[int] = None  # torch intra-op threads in the trainer process; None = cores - workers
    deterministic: bool = False
    progress_bar: Optional[bool] = None  # None: on when stdout is a terminal
    entropy_baseline: bool = True  # print the byte-unigram entropy of the val text beside val_bpb
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    # issue 11 item 3 (lmlab.train.run): speed and budget controls
    compile: bool = False  # torch.compile the model in place (checkpoint keys unchanged)
    compile_backend: str = "inductor"  # torch.compile backend; "aot_eager" needs no C compiler
    accumulate_grad_batches: int = 1  # micro-batches per optimizer step (max_steps counts optimizer steps)
    max_time: Optional[str] = None  # wall-clock budget "DD:HH:MM:SS" (Lightning's max_time); null = none

    def check(self, run: RunConfig) -> list[str]:
        p = []
        if str(self.precision) not in PRECISIONS:
            p.append(f"trainer.precision={self.precision!r} is not one of {', '.join(PRECISIONS)}"
                     + did_you_mean(self.precision, PRECISIONS, "trainer.precision="))
        elif self.accelerator == "cpu" and self.precision in ("16-mixed", "16-true"):
            p.append(f"trainer.precision={self.precision} is not supported on CPU: use bf16-mixed")
        if self.strategy.startswith("fsdp") and self.accelerator == "cpu":
            p.append(f"trainer.strategy={self.strategy} needs a GPU (Lightning's FSDP is CUDA only): "
                     "use trainer=fsdp on a GPU machine, or trainer.strategy=ddp on CPU")
        if self.accumulate_grad_batches < 1:
            p.append(f"trainer.accumulate_grad_batches={self.accumulate_grad_batches} must be >= 1")
        if self.max_time is not None and not re.fullmatch(r"\d{1,2}:\d{2}:\d{2}:\d{2}", str(self.max_time)):
            p.append(f"trainer.max_time={self.max_time!r} must read DD:HH:MM:SS (e.g. 00:00:05:00), or null")
        if self.max_steps <= 0:
            p.append(f"trainer.max_steps={self.max_steps} must be positive")
        if self.val_every <= 0:
            p.append(f"trainer.val_every={self.val_every} must be positive")
        if self.keep_last < 1:
            p.append(f"trainer.keep_last={self.keep_last} must be >= 1")
        if self.log_every <= 0:
            p.append(f"trainer.log_every={self.log_every} must be positive")
        # Lightning's own names (tests/test_reliability.py checks they stay valid), checked here so a
        # typo fails before any data or model work instead of inside Trainer(...)
        if self.accelerator not in ACCELERATORS:
            p.append(f"trainer.accelerator={self.accelerator!r} is not one of {', '.join(ACCELERATORS)}"
                     f"{did_you_mean(self.accelerator, ACCELERATORS, 'trainer.accelerator=')}")
        elif self.accelerator in ("gpu", "cuda"):
            import torch

            if not torch.cuda.is_available():
                p.append(f"trainer.accelerator={self.accelerator}: no CUDA GPU is available on this machine "
                         "(use trainer=cpu, or trainer.accelerator=cpu)")
            elif self.devices > torch.cuda.device_count():
                p.append(f"trainer.devices={self.devices}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        elif self.accelerator == "mps":
            import torch

            if not torch.backends.mps.is_available():
                p.append("trainer.accelerator=mps: MPS is not available on this machine")
        if self.devices == 0 or self.devices < -1:
            p.append(f"trainer.devices={self.devices} must be >= 1 (or -1: every device)")
        if self.num_nodes < 1:
            p.append(f"trainer.num_nodes={self.num_nodes} must be >= 1")
        if self.strategy not in STRATEGIES:
            p.append(f"trainer.strategy={self.strategy!r} is not one of {', '.join(STRATEGIES)}"
                     f"{did_you_mean(self.strategy, STRATEGIES, 'trainer.strategy=')}")
        return p


# Valid Lightning values (lightning 2.6: AcceleratorRegistry, StrategyRegistry; PRECISIONS above);
# tests/test_reliability.py asserts each is accepted by the installed Lightning.
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "tpu", "auto")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_true",
              "ddp_find_unused_parameters_false", "fsdp", "fsdp_cpu_offload", "deepspeed", "deepspeed_stage_1",
              "deepspeed_stage_2", "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
              "single_device")


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "lmlab"
    entity: Optional[str] = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online only if logged in


@dataclass
class ProbeConfig:
    """The continuation probe (lmlab.eval.probe, issue 6), optionally run at the end of training."""

    enabled: bool = False  # run at the end of training and write probe.json beside the checkpoints
    n_prompts: int = 200  # matched pairs: n boundary + n mid-token prompts
    context_tokens: int = 64  # every prompt is truncated (left) to exactly this many tokens
    max_target_bytes: int = 16  # rest-of-word target truncated to this many bytes
    heal_k: list[int] = field(default_factory=lambda: [1])  # healing variants besides plain
    min_prob: float = 1e-4  # search bound: nodes below this path probability are not expanded
    max_batch: int = 64  # rows per model call
    seed: int = 0  # chooses the cuts; independent of the run seed on purpose
    n_examples: int = 8  # pairs written out verbatim in probe.json
    # a tokenizer config whose deterministic segmentation places the cuts (null: the run's own
    # tokenizer); lets a byte-level model be probed on a subword model's prompts (issue 15)
    cut_tokenizer: Any = variant(registry.TOKENIZER, optional=True)
    # with cut_tokenizer: the context, in its tokens, that picks the cuts and the prompts' left edges
    # (null: context_tokens); set it to the subword runs' context_tokens to get their very prompts
    cut_context_tokens: Optional[int] = None

    def check(self, run) -> list[str]:
        """Problems with these settings; none while disabled (the CLI checks an enabled copy)."""
        if not self.enabled:
            return []
        p = []
        if self.n_prompts <= 0:
            p.append(f"probe.n_prompts={self.n_prompts} must be positive")
        if self.context_tokens <= 0 or self.max_target_bytes <= 0:
            p.append("probe.context_tokens and probe.max_target_bytes must be positive")
        if any(k < 1 for k in self.heal_k):
            p.append(f"probe.heal_k={self.heal_k}: each k must be >= 1 (plain is always probed)")
        if not 0.0 <= self.min_prob < 1.0:
            p.append(f"probe.min_prob={self.min_prob} must be in [0, 1)")
        seq_len = getattr(getattr(run, "model", None), "seq_len", None)
        if seq_len is not None and self.context_tokens + self.max_target_bytes > seq_len:
            p.append(
                f"probe.context_tokens={self.context_tokens} + probe.max_target_bytes="
                f"{self.max_target_bytes} exceeds model.seq_len={seq_len}"
            )
        return p


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    attention: Any = variant(registry.ATTENTION)
    pos: Any = variant(registry.POS)
    tokenizer: Any = variant(registry.TOKENIZER)
    data: Any = variant(registry.DATA)
    task: Any = variant(registry.TASK)  # lm | image_text (lmlab/tasks): loss, metrics, module
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    seed: int = 1337
    run_name: str = "default"
    sweep_name: str = "sweep"
    out_dir: str = "outputs"
    run_dir: str = ""  # filled by train.py from Hydra (outputs/<run_name> or outputs/<sweep>/<job>)
    resume: Union[bool, str] = "auto"  # auto | true | false | a checkpoint path
    cache_dir: str = ""  # tokenizer/corpus cache; "" -> $LMLAB_CACHE or ~/.cache/lmlab

    def check(self, run) -> list[str]:
        p = []
        if isinstance(self.seed, int) and not 0 <= self.seed < 2**32:
            p.append(f"seed={self.seed} must be in [0, 2**32) (torch and numpy seeds are unsigned 32-bit)")
        for key in ("run_name", "sweep_name"):
            problem = _name_problem(getattr(self, key))
            if problem:
                p.append(f"{key}={getattr(self, key)!r} {problem}")
        return p


def _name_problem(name: Any) -> str:
    """Why a run/sweep name would not stay inside out_dir ('' if it does)."""
    import posixpath

    if not isinstance(name, str):
        return ""  # the type problem is reported already
    if not name.strip():
        return "is empty"
    if name.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", name):
        return "must be a name under out_dir, not an absolute path"
    parts = re.split(r"[/\\]", name)
    if any(part in ("..", ".") for part in parts) or posixpath.normpath(name.replace("\\", "/")) in (".", ".."):
        return "must stay inside out_dir (no '.' or '..' parts)"
    return ""


# --------------------------------------------------------------------------------------------
# Dict -> dataclass conversion that collects every problem.
# --------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(value, inner[0], path, problems)
        for a in inner:  # first type that accepts it
            sub: list[str] = []
            out = _convert(value, a, path, sub)
            if not sub:
                return out
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in args:
            problems.append(f"{path}={value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {value!r}")
            return value
        elem = args[0] if args else Any
        return [_convert(v, elem, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return tp()
        return from_dict(tp, value, path, problems)
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{path}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {value!r}")
        return value
    return value


def did_you_mean(name: str, choices, prefix: str = "") -> str:
    """'' or ' (did you mean `a.x` or `a.y`?)': the closest valid names, by difflib's ratio."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"`{prefix}{c}`" for c in close) + "?)"


def from_dict(cls: type, data: dict, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; append every problem (prefixed with ``path``)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            problems.append(f"{prefix}{key}: unknown key{did_you_mean(key, fields, prefix)} "
                            f"(allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        reg = f.metadata.get("registry")
        if reg is not None and data[name] is None and f.metadata.get("optional"):
            kwargs[name] = None
        elif reg is not None:
            kwargs[name] = _build_variant(reg, data[name], f"{prefix}{name}", problems)
        else:
            kwargs[name] = _convert(data[name], hints[name], f"{prefix}{name}", problems)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a dataclass's own __post_init__ objected
        problems.append(f"{path or cls.__name__}: {e}")
        return None


def _build_variant(reg: registry.Registry, data: Any, path: str, problems: list[str]) -> Any:
    if not isinstance(data, dict) or "name" not in data:
        problems.append(f"{path}: expected a mapping with a 'name' (one of {', '.join(reg.names())})")
        return None
    try:
        cls = reg.get(data["name"])
    except registry.UnknownVariantError as e:
        problems.append(f"{path}.name: {e}")
        return None
    return from_dict(cls.Config, data, path, problems)


def _checks(obj: Any, run: RunConfig, problems: list[str], typed: bool) -> None:
    """Run every ``check(run)``. ``typed``: no key/type problem was found, so every value has its
    declared type and a check that raises is a bug in the check -- it propagates with its traceback.
    Otherwise a raising check is most likely tripping on a value already reported as wrongly typed;
    it is reported as a problem (never dropped)."""
    if obj is None or not dataclasses.is_dataclass(obj):
        return
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            problems.extend(check(run))
        except Exception as e:
            if typed:
                raise
            problems.append(f"{type(obj).__name__}.check could not run because of the problems above "
                            f"({type(e).__name__}: {e})")
    for f in dataclasses.fields(obj):
        _checks(getattr(obj, f.name), run, problems, typed)


VARIANT_GROUPS = {"attention": registry.ATTENTION, "pos": registry.POS, "tokenizer": registry.TOKENIZER,
                  "data": registry.DATA, "task": registry.TASK}


def load_variants() -> None:
    """Import every variant module so the registries are complete."""
    for reg in VARIANT_GROUPS.values():
        reg.names()


def build_config(cfg: Any) -> RunConfig:
    """Hydra DictConfig (or plain dict) -> validated RunConfig, or one ConfigError listing all problems."""
    load_variants()
    if not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: v for k, v in cfg.items() if k not in ("hydra", "debug", "experiment")}
    if isinstance(cfg.get("model"), dict) and cfg["model"].get("init_from"):
        from lmlab.interop.imports import apply_init_from  # the architecture of a transformers dir

        cfg = apply_init_from(cfg)
    problems: list[str] = []
    run = from_dict(RunConfig, cfg, "", problems)
    for group in VARIANT_GROUPS:
        if group not in cfg:
            problems.append(f"{group}: missing (choose one with {group}=NAME)")
    if run is not None and all(getattr(run, g) is not None for g in VARIANT_GROUPS):
        _checks(run, run, problems, typed=not problems)  # cross-field checks run even beside key/type problems
    if problems:
        raise ConfigError(problems)
    _resolve(run, run)
    return run


def _resolve(obj: Any, run: RunConfig) -> None:
    """Fill derived values (``resolve(run)`` of each config, e.g. MLA's dims) once the config is valid,
    so the saved config shows the numbers the run used instead of null."""
    if obj is None or not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        _resolve(getattr(obj, f.name), run)
    if callable(getattr(obj, "resolve", None)):
        obj.resolve(run)


def to_dict(run: RunConfig) -> dict:
    return dataclasses.asdict(run)


# --------------------------------------------------------------------------------------------
# Run identity: run names, sweep names, resume targets (docs/runs.md).
# --------------------------------------------------------------------------------------------

RUN_NAME_MAX = 120  # characters; longer names keep whole overrides up to ~100, then a count and a hash
GROUPS = ("task", "model", "attention", "pos", "tokenizer", "data", "optim", "trainer", "logger",
          "experiment", "debug")


def _split_top(text: str) -> list[str]:
    """Split Hydra's comma-joined override_dirname at commas outside brackets and quotes."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur)
            cur = ""
            continue
        cur += ch
    return [o for o in [*out, cur] if o]


SWEPT_ENV = "LMLAB_SWEPT_KEYS"  # set per job through hydra.job.env_set by prepare_argv


def run_name_from_overrides(overrides: Any, exclude: Any = (), sweeper_params: Any = None,
                            env_set: Any = None) -> str:
    """Readable, stable run name from the command-line overrides (``hydra:overrides.task``).

    Overrides whose key matches an ``exclude`` pattern (fnmatch: ``logger.*``) are left out -- they
    cannot change results (``hydra.job.config.override_dirname.exclude_keys`` in conf/config.yaml).
    In a sweep the swept keys come first (the keys of ``hydra.sweeper.params``, and of an ad-hoc
    ``-m`` sweep as recorded by ``prepare_argv`` in ``hydra.job.env_set``), so a trial's folder
    shows what distinguishes it even when the name is cut; then group choices
    (``attention=mla,pos=rope2d``), then the other overrides, each part sorted, so the same
    overrides in any order name the same directory. ``/`` becomes ``_``. A name longer than
    ``RUN_NAME_MAX`` keeps the whole overrides that fit, then ``+<n>more-<hash>`` (the hash of the
    full name keeps it unique). No overrides: ``default``.
    """
    import fnmatch
    import hashlib

    items = _split_top(overrides) if isinstance(overrides, str) else [str(o) for o in overrides or ()]
    patterns = [str(p) for p in exclude or ()]
    swept = set(sweeper_params or {})
    swept |= {k for k in str((env_set or {}).get(SWEPT_ENV, "")).split(",") if k}
    first, groups, others = [], [], []
    for o in items:
        key, _, value = o.partition("=")
        bare = key.lstrip("+")
        if any(fnmatch.fnmatchcase(bare.lstrip("~"), p) for p in patterns):
            continue
        part = (f"{bare}={value}" if _ else bare).replace("/", "_")
        (first if bare in swept else groups if bare in GROUPS else others).append(part)
    parts = sorted(first) + sorted(groups) + sorted(others)
    name = ",".join(parts) or "default"
    if len(name) <= RUN_NAME_MAX:
        return name
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    kept: list[str] = []
    for part in parts:
        if len(",".join([*kept, part])) > RUN_NAME_MAX - 20:
            break
        kept.append(part)
    if not kept:  # one very long override: cut it
        return parts[0][: RUN_NAME_MAX - 20] + f"+{len(parts) - 1}more-{digest}"
    return ",".join(kept) + f",+{len(parts) - len(kept)}more-{digest}"


def swept_keys(overrides: list[str]) -> list[str]:
    """Keys a multirun's overrides sweep (``attention=mha,gqa``, ``optim.lr=range(...)``,
    ``hydra.sweeper.params.optim.lr=...``), in command-line order; [] when the overrides do not
    parse (Hydra then reports them itself)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - any parse error is Hydra's to report, with its own message
        return []
    keys = []
    for o in parsed:
        key = o.key_or_group
        if key.startswith("hydra.sweeper.params."):
            key = key[len("hydra.sweeper.params."):]
        elif not o.is_sweep_override() or key.startswith("hydra"):
            continue
        if key not in keys:
            keys.append(key)
    return keys


def sweep_name_from_overrides(overrides: list[str]) -> str | None:
    """``sweep-<key>-<key>`` from the swept keys (``swept_keys``); None when nothing is swept."""
    import hashlib

    keys = [k.replace("/", "_") for k in swept_keys(overrides)]
    if not keys:
        return None
    name = "sweep-" + "-".join(keys)
    if len(name) > 80:
        name = name[:69] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


_UNSAFE_UNQUOTED = re.compile(r"[=,\[\]{}()\s'\"$]")


def quote_resume(override: str) -> str:
    """``resume=VALUE`` with VALUE quoted for Hydra's grammar when it holds ``=``, ``,``, brackets,
    spaces or quotes (a path or run name, taken verbatim); any other override unchanged."""
    m = re.fullmatch(r"(\+{0,2}resume)=(.*)", override, re.S)
    if not m or not m.group(2) or m.group(2)[0] in "'\"" or not _UNSAFE_UNQUOTED.search(m.group(2)):
        return override
    value = m.group(2)
    q = "'" if "'" not in value else '"'
    return override if q in value else f"{m.group(1)}={q}{value}{q}"


def prepare_argv(argv: list[str]) -> list[str]:
    """Command-line fixes applied before Hydra parses ``argv`` (train.py):

    - ``resume=VALUE`` is quoted when VALUE holds characters Hydra's override grammar would parse
      (``resume=outputs/attention=mla,pos=rope/checkpoints/last.ckpt``), so paths and run names need
      no shell quoting; an already quoted value is left alone.
    - A multirun (``-m``) without ``sweep_name=`` (and without an ``experiment=``, which names its
      own sweep) gets ``sweep_name=sweep-<swept keys>``, so two different sweeps never share a folder.
      Every job receives it as an ordinary override (excluded from run names), which is why this is
      done here and not by a resolver: Hydra resolves the sweep folder again inside each job, where
      only that job's single values are visible. For the same reason the swept keys travel to each
      job as ``hydra.job.env_set.LMLAB_SWEPT_KEYS`` (read by the run-name resolver, and harmless
      as an environment variable).
    """
    out = [argv[0], *(quote_resume(a) for a in argv[1:])]
    args = out[1:]
    multirun = any(a in ("-m", "--multirun") or a == "hydra.mode=MULTIRUN" for a in args)
    overrides = [a for a in args if not a.startswith("-") and "=" in a]
    keys = swept_keys(overrides) if multirun else []
    extra = []
    if keys and not any(re.match(r"\+{0,2}(sweep_name|experiment)=", a) for a in overrides):
        extra.append(f"sweep_name={sweep_name_from_overrides(overrides)}")
    if keys and not any(SWEPT_ENV in a for a in overrides):  # run names put these keys first
        extra.append(f"+hydra.job.env_set.{SWEPT_ENV}='{','.join(keys)}'")
    if extra:  # beside the other overrides: argparse takes them as one run of positionals
        last = max(i for i, a in enumerate(out) if i > 0 and a in overrides)
        out[last + 1:last + 1] = extra
    return out


def check_override_keys(argv: list[str]) -> Optional[str]:
    """One message for a ``key=value`` override whose key does not exist, naming the closest keys, or None.

    Hydra refuses such a key itself, before lmlab's validation runs, and advises ``+key=value``, which
    only moves the error (lmlab then refuses the unknown key). train.py calls this first. Swept values
    (``a=1,2``) and prefixed overrides (``+``, ``++``, ``~``) are left to Hydra and to validation."""
    from hydra.errors import ConfigCompositionException

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    plain = [a for a in overrides if not re.search(r"[,(\[]", a.split("=", 1)[1]) or a.startswith("resume=")]
    try:
        compose(plain, validate=False)
        return None
    except ConfigCompositionException as e:
        m = re.search(r"Could not override '([^']+)'", str(e))
        if not m:
            return None  # another composition problem: Hydra's own message says it
    key = m.group(1)
    parent, _, leaf = key.rpartition(".")
    try:
        cfg = compose([a for a in plain if a.split("=", 1)[0] != key], validate=False)
        node = cfg
        for part in parent.split(".") if parent else []:
            node = node[part]
        siblings = list(node.keys())
    except Exception:  # noqa: BLE001 - the suggestion is a courtesy; the refusal stands without it
        siblings = []
    where = f"{parent}." if parent else ""
    return (f"invalid config (1 problem):\n  - {key}: unknown key{did_you_mean(leaf, siblings, where)}"
            + (f" (allowed: {', '.join(sorted(map(str, siblings)))})" if siblings else ""))


def resume_target(resume: Any, out_dir: str) -> Any:
    """``resume=`` as given -> what ``resolve_resume`` takes: auto/true/false and checkpoint files
    unchanged; a run directory (``outputs/NAME``) or a run name under ``out_dir`` (``NAME``) becomes
    its checkpoint folder, where ``resolve_resume`` takes the newest *loadable* checkpoint (as
    ``resume=auto`` does: a damaged last.ckpt is skipped and named). Anything else is returned
    unchanged (resolve_resume names it)."""
    from pathlib import Path

    if isinstance(resume, bool) or str(resume).lower() in ("auto", "true", "false", "yes", "no", "", "none"):
        return resume
    p = Path(str(resume))
    if p.is_file():
        return str(p)
    for d in (p, Path(out_dir) / p):
        if d.is_dir():
            return str(d / "checkpoints" if (d / "checkpoints").is_dir() else d)
    return resume


def _conf_dir() -> str:
    """The config tree: the copy shipped inside an installed package (``lmlab/conf``, see setup.py),
    else the repository's ``conf/`` (a checkout, an editable install)."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    return str(next((d for d in (here / "conf", here.parent / "conf") if (d / "config.yaml").is_file()),
                    here.parent / "conf"))


CONF_DIR = _conf_dir()


def compose(overrides: list[str] | tuple[str, ...] = (), validate: bool = True):
    """Compose conf/ with Hydra's compose API (no run directory, no logging), for tools and tests.

    Returns the validated RunConfig (or the raw DictConfig with ``validate=False``).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("lmlab_run_name", run_name_from_overrides, replace=True)
    overrides = [quote_resume(o) for o in overrides]
    if not any(o.startswith("run_name=") for o in overrides):
        overrides.append("run_name=composed")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return build_config(cfg) if validate else cfg
