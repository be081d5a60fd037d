"""Typed run configuration, built from Hydra's composed config and validated before any work.

Hydra composes yaml files into an untyped tree; ``build_config`` turns it into the dataclasses below.
Groups whose shape depends on the chosen variant (attention, pos, tokenizer, data) take their
dataclass from the variant's registered class (``cls.Config``), so each variant owns its keys.

One validation pass collects *every* problem -- unknown keys, wrong types, illegal combinations
(each config's ``check(run)`` method) -- and raises a single ``ConfigError`` naming the keys.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from lmlab import registry


class ConfigError(ValueError):
    def __init__(self, problems: list[str]):
        self.problems = problems
        n = len(problems)
        items = "\n  - ".join(problems)
        super().__init__(f"invalid config ({n} problem{'' if n == 1 else 's'}):\n  - {items}")


# --------------------------------------------------------------------------------------------
# Schemas of the fixed groups. Variant groups are declared with ``variant(REGISTRY)``.
# --------------------------------------------------------------------------------------------


def variant(reg: registry.Registry) -> Any:
    return field(default=None, metadata={"registry": reg})


@dataclass
class ModelConfig:
    """Decoder-only Transformer sizes; vocab_size comes from the tokenizer at build time."""

    d_model: int = 256
    n_layer: int = 4
    n_head: int = 4
    head_dim: Optional[int] = None  # default d_model // n_head
    mlp: Literal["swiglu", "gelu", "relu2"] = "swiglu"  # relu2: relu(x)^2, GELU's width
    mlp_ratio: float = 4.0  # hidden = ratio*d (gelu, relu2) or 2/3*ratio*d rounded up to 32 (swiglu)
    dropout: float = 0.0
    tie_embeddings: bool = True
    seq_len: int = 256
    norm_eps: float = 1e-5
    init_std: float = 0.02
    qk_norm: bool = False  # RMSNorm on each head's q and k before rotation (attention variants may refuse)
    logit_softcap: Optional[float] = None  # logits -> c * tanh(logits / c); null: off

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_head

    def check(self, run: RunConfig) -> list[str]:
        p = []
        for k in ("d_model", "n_layer", "n_head", "seq_len"):
            if isinstance(getattr(self, k), int) and getattr(self, k) <= 0:
                p.append(f"model.{k}={getattr(self, k)} must be positive")
        ints = all(isinstance(v, int) for v in (self.d_model, self.n_head))
        if ints and self.head_dim is None and self.n_head > 0 and self.d_model % self.n_head:
            p.append(
                f"model.n_head={self.n_head} does not divide model.d_model={self.d_model}"
                " (set model.head_dim explicitly, or pick a divisor)"
            )
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"model.dropout={self.dropout} must be in [0, 1)")
        if self.logit_softcap is not None and not self.logit_softcap > 0:
            p.append(f"model.logit_softcap={self.logit_softcap} must be positive or null (off)")
        return p


@dataclass
class OptimConfig:
    """lmlab.optim: AdamW, or Muon for hidden matrices + AdamW for the rest; cosine or wsd schedule."""

    name: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-3  # AdamW's lr (with muon: embeddings, heads, gains, biases)
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1  # the schedule ends at lr * min_lr_ratio at trainer.max_steps
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
class TrainerConfig:
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    max_steps: int = 600
    val_every: int = 100  # steps between validations (and checkpoints)
    limit_val_batches: int = 40
    log_every: int = 10
    keep_last: int = 2  # checkpoints kept (the k newest complete ones)
    num_threads: Optional[int] = None  # torch intra-op threads in the trainer process; None = cores - workers
    deterministic: bool = False
    progress_bar: Optional[bool] = None  # None: on when stdout is a terminal
    entropy_baseline: bool = True  # print the byte-unigram entropy of the val text beside val_bpb

    def check(self, run: RunConfig) -> list[str]:
        p = []
        if self.max_steps <= 0:
            p.append(f"trainer.max_steps={self.max_steps} must be positive")
        if self.val_every <= 0:
            p.append(f"trainer.val_every={self.val_every} must be positive")
        if self.keep_last < 1:
            p.append(f"trainer.keep_last={self.keep_last} must be >= 1")
        return p


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


def from_dict(cls: type, data: dict, path: str, problems: list[str]) -> Any:
    """Build dataclass ``cls`` from ``data``; append every problem (prefixed with ``path``)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    prefix = f"{path}." if path else ""
    for key in data:
        if key not in fields:
            problems.append(
                f"{prefix}{key}: unknown key (allowed: {', '.join(sorted(fields))})"
            )
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        reg = f.metadata.get("registry")
        if reg is not None:
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


def _checks(obj: Any, run: RunConfig, problems: list[str]) -> None:
    if obj is None or not dataclasses.is_dataclass(obj):
        return
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            problems.extend(check(run))
        except (TypeError, ValueError, AttributeError):
            pass  # a wrongly typed value, already reported, made this check meaningless
    for f in dataclasses.fields(obj):
        _checks(getattr(obj, f.name), run, problems)


def load_variants() -> None:
    """Import every variant module so the registries are complete."""
    for reg in (registry.ATTENTION, registry.POS, registry.TOKENIZER, registry.DATA):
        reg.names()


def build_config(cfg: Any) -> RunConfig:
    """Hydra DictConfig (or plain dict) -> validated RunConfig, or one ConfigError listing all problems."""
    load_variants()
    if not isinstance(cfg, dict):
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg = {k: v for k, v in cfg.items() if k not in ("hydra", "debug", "experiment")}
    problems: list[str] = []
    run = from_dict(RunConfig, cfg, "", problems)
    for group in ("attention", "pos", "tokenizer", "data"):
        if group not in cfg:
            problems.append(f"{group}: missing (choose one with {group}=NAME)")
    if run is not None and all(getattr(run, g) is not None for g in ("attention", "pos", "tokenizer", "data")):
        _checks(run, run, problems)  # cross-field checks run even beside key/type problems
    if problems:
        raise ConfigError(problems)
    return run


def to_dict(run: RunConfig) -> dict:
    return dataclasses.asdict(run)


def run_name_from_overrides(overrides: str) -> str:
    """Readable run name from Hydra's override_dirname; long ones keep a prefix and a hash."""
    import hashlib

    name = overrides.replace("/", "_") or "default"
    if len(name) > 120:
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


CONF_DIR = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "conf")


def compose(overrides: list[str] | tuple[str, ...] = (), validate: bool = True):
    """Compose conf/ with Hydra's compose API (no run directory, no logging), for tools and tests.

    Returns the validated RunConfig (or the raw DictConfig with ``validate=False``).
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("lmlab_run_name", run_name_from_overrides, replace=True)
    overrides = list(overrides)
    if not any(o.startswith("run_name=") for o in overrides):
        overrides.append("run_name=composed")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    return build_config(cfg) if validate else cfg
