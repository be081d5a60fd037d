"""lmlab's one command-line surface: ``python -m lmlab COMMAND key=value ...`` (``lmlab/__main__.py``).

Every command (``generate``, ``probe``, ``tokenize``, ``inspect``, ``report``) is a module here with
an ``Args`` dataclass and ``main(argv)``; ``parse`` turns its arguments into that dataclass the same
way for all of them:

- ``key=value``: the key is split off at the *first* ``=``. A value for a string field (``prompt=``,
  ``ckpt=``, ``out=``, any path) is taken verbatim, so ``ckpt=outputs/attention=mla,pos=rope/last.ckpt``
  works unquoted; any other value is parsed as YAML, as Hydra/OmegaConf parse a dotlist
  (``top_k=50`` -> 50, ``top_p=0.9`` -> 0.9, ``use_cache=false`` -> False, ``seed=null`` -> None).
- Values are checked by ``lmlab.config.from_dict`` (the training configs' machinery), then by the
  dataclass's ``check()``; every problem is reported at once, naming the key, and an unknown key names
  the closest valid ones (difflib). A command that builds a model from a training config (``inspect``,
  ``tokenize``) passes the keys it does not own to ``compose_run`` as training overrides.
- An argument without ``=`` -- or whose text before ``=`` is not a key (``outputs/a=b``), or an
  existing path that is not one of the command's keys -- is positional (run directories for ``report``,
  the action for ``tokenize``); a command without positionals refuses it.
- ``--help`` lists the keys, their types, defaults and meaning (from the field's ``help`` metadata).

User mistakes (``ConfigError``, ``DataError``, unknown variants, missing files) end in one message on
stderr and exit status 2, never a traceback; any other exception keeps its traceback.
Checkpoints are loaded by ``load_checkpoint`` here, and nowhere else in the commands.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from lmlab.config import ConfigError, did_you_mean, from_dict

COMMANDS = {  # name -> (module, one-line summary)
    "generate": ("lmlab.cli.generate", "sample text from a checkpoint (KV cache; optional token healing)"),
    "probe": ("lmlab.cli.probe", "continuation probe of a checkpoint or of every run of a sweep"),
    "tokenize": ("lmlab.cli.tokenize", "train a tokenizer, encode stdin, sample segmentations, corpus stats"),
    "inspect": ("lmlab.cli.inspect", "parameters, KV cache and FLOPs per token of a training config"),
    "report": ("lmlab.cli.report", "Markdown + plots over run directories (language-model or digits runs)"),
    "export": ("lmlab.cli.export", "write a checkpoint as a Hugging Face transformers directory"),
    "eval": ("lmlab.cli.eval", "downstream tasks through lm-eval-harness (offline: lmlab_nextline)"),
}
KEY = re.compile(r"^(\+\+|\+|~)?[A-Za-z_][\w-]*(\.[\w-]+)*$")  # what may stand before the first '='


class UsageError(Exception):
    """A user mistake outside a config (a missing file, a wrong action): one line, no traceback."""


class ArgumentError(ConfigError):
    """Every problem with one command's arguments, listed like a training config's problems."""

    def __init__(self, command: str, problems: list[str]):
        super().__init__(problems)
        n = len(problems)
        self.args = (f"invalid arguments to `python -m lmlab {command}` ({n} problem{'' if n == 1 else 's'}):"
                     "\n  - " + "\n  - ".join(problems),)

    def __str__(self) -> str:
        return self.args[0]


def arg(default: Any = None, help: str = "", *, factory=None, required: bool = False) -> Any:
    """A command key: its default, a one-line help for ``--help``, and whether it must be given."""
    meta = {"help": help, "required": required}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------
# Parsing.
# ---------------------------------------------------------------------------------------------


def _is_str(tp: Any) -> bool:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return tp is str or (typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None))
                         and args == [str])


def parse_value(raw: str) -> Any:
    """A value as a Hydra/OmegaConf dotlist parses it (YAML: ints, floats like 1e-4, bools, null, lists)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]), resolve=False)["v"]


@dataclass
class Parsed:
    args: Any  # the command's Args dataclass
    positional: list[str]
    overrides: list[str]  # key=value pairs the command does not own (training overrides)


def split(argv: list[str], keys: set[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """-> ([(key, raw value)], positional arguments); see the module docstring for the rule."""
    pairs, positional = [], []
    for a in argv:
        key, eq, raw = a.partition("=")
        if eq and (key in keys or (KEY.match(key) and not Path(a).exists())):
            pairs.append((key, raw))
        else:
            positional.append(a)
    return pairs, positional


def parse(command: str, cls: type, argv: list[str], positional: bool = False,
          overrides: bool = False) -> Parsed:
    """Parse ``argv`` into ``cls``; raise ArgumentError listing every problem (see the module docstring).

    ``positional``: the command takes arguments without ``=``; ``overrides``: keys that are not the
    command's go back as training overrides instead of being refused.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    pairs, pos = split(argv, set(fields))
    problems: list[str] = []
    data: dict[str, Any] = {}
    rest: list[str] = []
    for key, raw in pairs:
        if key not in fields:
            if overrides:
                rest.append(f"{key}={raw}")
            else:
                problems.append(f"{key}: unknown key{did_you_mean(key, fields)} (allowed: {', '.join(fields)})")
            continue
        if _is_str(hints[key]):
            data[key] = None if raw == "null" and hints[key] is not str else raw  # verbatim
            continue
        try:
            data[key] = parse_value(raw)
        except yaml.YAMLError as e:  # what OmegaConf's dotlist raises on a malformed value
            problems.append(f"{key}={raw}: cannot parse the value ({str(e).splitlines()[0]})")
    if pos and not positional:
        problems.append(f"unexpected argument{'s' if len(pos) > 1 else ''} {' '.join(map(repr, pos))}: "
                        "every argument is key=value (see --help)")
    obj = from_dict(cls, data, "", problems)
    for name, f in fields.items():
        if f.metadata.get("required") and data.get(name) in (None, ""):
            problems.append(f"{name}: required ({f.metadata.get('help', '')})")
    if obj is not None and not problems and hasattr(obj, "check"):
        problems += obj.check()
    if problems:
        raise ArgumentError(command, problems)
    return Parsed(obj, pos, rest)


def _type_str(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    s = str(tp).replace("typing.", "")
    m = re.fullmatch(r"Optional\[(.*)\]", s)
    return f"{m.group(1)} | null" if m else s


def help_text(command: str, module) -> str:
    """``--help``: the command's docstring, then every key with its type, default and meaning."""
    cls = module.Args
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("required"):
            default = "(required)"
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = json.dumps(f.default_factory())  # type: ignore[misc]
        else:
            default = json.dumps(f.default)  # as it is written on the command line: null, true, ""
        rows.append((f.name, _type_str(hints[f.name]), default, f.metadata.get("help", "")))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    keys = "\n".join(f"  {n:<{w[0]}}  {t:<{w[1]}}  {d:<{w[2]}}  {h}" for n, t, d, h in rows)
    usage = getattr(module, "USAGE", f"python -m lmlab {command} key=value ...")
    return f"usage: {usage}\n\n{(module.__doc__ or '').strip()}\n\nkeys (key=value; type, default):\n{keys}\n"


# ---------------------------------------------------------------------------------------------
# Training configs and checkpoints, for the commands that need them.
# ---------------------------------------------------------------------------------------------


def compose_run(overrides: list[str]):
    """The validated RunConfig composed from conf/ with training overrides, as train.py would build it.

    Group choices and dotted keys are checked first so that a mistake is one message naming the key and
    the closest valid options (Hydra's own errors suggest ``+key``, or list nothing)."""
    from omegaconf import OmegaConf

    from lmlab.config import CONF_DIR, compose

    conf = Path(CONF_DIR)
    problems = []
    choices = []
    for o in overrides:
        key, _, value = o.partition("=")
        if "." not in key and not key.startswith(("+", "~")) and (conf / key).is_dir():
            options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
            if value not in options and value != "null":
                problems.append(f"{key}={value}: no such option{did_you_mean(value, options)} "
                                f"(available: {', '.join(options)})")
            else:
                choices.append(o)
    if problems:
        raise ConfigError(problems)
    # dotted keys against the tree these group choices compose
    base = OmegaConf.to_container(compose(choices, validate=False), resolve=False)
    known = set(_flat_keys({k: v for k, v in base.items() if k != "hydra"}))
    good = []
    for o in overrides:
        key = o.partition("=")[0]
        if "." in key and not key.startswith(("+", "~")) and key not in known:
            parent, leaf = key.rsplit(".", 1)  # suggest among the siblings, not every key
            siblings = [k.rsplit(".", 1)[1] for k in known
                        if k.startswith(parent + ".") and "." not in k[len(parent) + 1:]]
            hint = did_you_mean(leaf, siblings, parent + ".") if siblings else did_you_mean(key, known)
            allowed = f" (allowed: {', '.join(sorted(siblings))})" if siblings else ""
            problems.append(f"{key}: unknown key{hint}{allowed}")
        else:
            good.append(o)
    try:
        run = compose(good)  # the rest is validated too, so every problem is reported at once
    except ConfigError as e:
        raise ConfigError(problems + e.problems) from None
    except Exception as e:  # Hydra's override grammar and composition errors: the user's input
        from hydra.errors import HydraException
        from omegaconf.errors import OmegaConfBaseException

        if isinstance(e, (HydraException, OmegaConfBaseException)):
            raise UsageError(str(e).strip().splitlines()[0]) from None
        raise
    if problems:
        raise ConfigError(problems)
    return run


def parse_with_run(command: str, cls: type, argv: list[str]):
    """-> (Parsed, RunConfig) for a command that also takes training overrides; the command's problems
    and the training config's are raised together, in one ArgumentError."""
    problems: list[str] = []
    try:
        parsed = parse(command, cls, argv, overrides=True)
    except ArgumentError as e:
        problems += e.problems
        parsed = Parsed(None, [], [a for a in argv if a.partition("=")[0] not in
                                   {f.name for f in dataclasses.fields(cls)}])
    try:
        run = compose_run(parsed.overrides)
    except ConfigError as e:
        problems += e.problems
    if problems:
        raise ArgumentError(command, problems)
    return parsed, run


def _flat_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out.append(prefix + str(k))
        if isinstance(v, dict):
            out += _flat_keys(v, f"{prefix}{k}.")
    return out


def resolve_ckpt(path: str) -> Path:
    """A checkpoint file, or a run directory (-> its ``checkpoints/last.ckpt``); UsageError if absent."""
    p = Path(path)
    if p.is_dir():
        p = p / "checkpoints" / "last.ckpt"
    if not p.is_file():
        raise UsageError(f"checkpoint not found: {p}")
    return p


def load_checkpoint(path: str | Path, log=print):
    """-> (model in eval mode, tokenizer or None, RunConfig) of a checkpoint file or run directory.

    The commands' one entry to ``lmlab.train.checkpoint.load_checkpoint`` (the one loader: tensors
    and plain data only, ``weights_only=True``; a damaged or foreign file is refused naming it).
    """
    from lmlab.train.checkpoint import load_checkpoint as load

    c = load(str(resolve_ckpt(str(path))))
    return c.model, c.tokenizer, c.run


# ---------------------------------------------------------------------------------------------
# Dispatch.
# ---------------------------------------------------------------------------------------------


def usage() -> str:
    w = max(map(len, COMMANDS))
    lines = "\n".join(f"  {n:<{w}}  {s}" for n, (_, s) in COMMANDS.items())
    return (f"usage: python -m lmlab COMMAND key=value ...   (python -m lmlab COMMAND --help for its keys)\n\n"
            f"commands:\n{lines}\n\nTraining is `python train.py key=value ...` (Hydra).")


def main(argv: Optional[list[str]] = None) -> int:
    import importlib

    from lmlab.errors import LmlabError

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}{did_you_mean(name, COMMANDS)}; "
              f"commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    if any(a in ("-h", "--help") for a in rest):
        print(help_text(name, module))
        return 0
    try:
        rc = module.main(rest)  # commands return what they made (ids, text) for Python callers
        return rc if isinstance(rc, int) else 0
    except (LmlabError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
