"""Optimizers and learning-rate schedules, built from ``run.optim`` into a Lightning optimizer dict.

``build_optimizer(model_or_named_params, run)`` returns ``{"optimizer", "lr_scheduler"}`` for
``LightningModule.configure_optimizers``; the scheduler is stepped every optimizer step.

Design choices:
- ``optim.name=adamw``: one ``torch.optim.AdamW`` with two groups, weight decay on tensors of two or
  more dimensions and none on gains and biases -- the same optimizer, groups and schedule lmlab built
  before this module (tests/test_recipe.py keeps that builder as a reference and compares step by step).
- ``optim.name=muon``: ``torch.optim.Muon`` (Jordan et al. 2024, in torch) for the *hidden* weight
  matrices, AdamW for everything else. Hidden means: a 2-D tensor named ``*.weight`` inside a decoder
  block (a name with a ``blocks`` component, e.g. ``blocks.0.attn.q_proj.weight``). Embeddings
  (``tok_emb``, ``pos.table``, ``patch_emb``), output heads (``lm_head``, ``image_head``), gains,
  biases and other block tensors (VQ's ``local_bias``) go to AdamW. The rule reads names only, so a
  module and its ``named_parameters()`` split the same way; tied weights appear once (under
  ``tok_emb``), so a tied head is AdamW's. Muon takes ``optim.muon_lr``, ``optim.muon_momentum``,
  ``optim.muon_weight_decay`` and ``optim.muon_adjust_lr``; AdamW keeps ``optim.lr``,
  ``optim.betas`` and ``optim.weight_decay``.
- Lightning's automatic optimization drives one optimizer, so the two are held by ``Combined``: a
  ``torch.optim.Optimizer`` whose ``param_groups`` and ``state`` are the parts' own (live views, no
  copies), whose ``step`` runs the closure once and then steps each part, and whose ``state_dict``
  is the parts' state dicts by name. No optimizer math is written here.
- One ``LambdaLR`` multiplies every group's own base lr by the same factor, so both parts follow one
  schedule: ``optim.schedule=cosine`` (linear warmup, cosine to ``min_lr_ratio`` at
  ``trainer.max_steps``) or ``wsd`` (linear warmup, constant, then over the last
  ``optim.decay_frac`` of the steps a ``linear`` or ``sqrt`` (1 - sqrt) decay to ``min_lr_ratio``).

Guarantees (tests/test_recipe.py): which tensor goes to which optimizer, by name; a ``Combined``
state dict saved and loaded into a fresh optimizer gives bit-identical next steps (Lightning saves
and restores it like any optimizer, so resume is exact); schedule values at the key steps.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, MutableMapping
from typing import Union

import torch
from torch import nn


# ------------------------------------------------------------------------------ schedules
def lr_factor(optim_cfg, max_steps: int) -> Callable[[int], float]:
    """The multiplier of every group's base lr at optimizer step ``step`` (0-based)."""
    o = optim_cfg
    warmup, floor = o.warmup_steps, o.min_lr_ratio

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        span = max(1, max_steps - warmup)
        progress = min(1.0, (step - warmup) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    decay_steps = wsd_decay_steps(o, max_steps)
    start = max_steps - decay_steps

    def wsd(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, decay_steps))
        shape = progress if o.decay_shape == "linear" else math.sqrt(progress)
        return floor + (1 - floor) * (1 - shape)

    return cosine if o.schedule == "cosine" else wsd


def wsd_decay_steps(optim_cfg, max_steps: int) -> int:
    return int(round(optim_cfg.decay_frac * max_steps))


# ------------------------------------------------------------------------------ parameter split
def is_hidden_matrix(name: str, p: torch.Tensor) -> bool:
    """Muon's share: a 2-D ``*.weight`` inside a decoder block (see the module docstring)."""
    return p.dim() == 2 and name.endswith(".weight") and "blocks" in name.split(".")


def split_params(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[list, list]:
    """(hidden, other) lists of (name, tensor), trainable tensors only, in the given order."""
    hidden, other = [], []
    for name, p in named:
        if p.requires_grad:
            (hidden if is_hidden_matrix(name, p) else other).append((name, p))
    return hidden, other


# ------------------------------------------------------------------------------ two optimizers as one
class _StateView(MutableMapping):
    """The parts' per-parameter states as one mapping. Lookups test membership first: the parts'
    states are defaultdicts, and a plain ``ChainMap`` lookup would plant an empty entry for a
    parameter of another part in the first one (which then breaks its ``state_dict``)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self._parts = parts

    def _owner(self, p) -> torch.optim.Optimizer:
        for opt in self._parts:
            if any(q is p for g in opt.param_groups for q in g["params"]):
                return opt
        raise KeyError(p)

    def __getitem__(self, p):
        for opt in self._parts:
            if p in opt.state:
                return opt.state[p]
        return self._owner(p).state[p]  # a parameter not stepped yet: its (empty) state

    def __setitem__(self, p, value) -> None:
        self._owner(p).state[p] = value

    def __delitem__(self, p) -> None:
        del self._owner(p).state[p]

    def __iter__(self):
        return (p for opt in self._parts for p in opt.state)

    def __len__(self) -> int:
        return sum(len(opt.state) for opt in self._parts)


class Combined(torch.optim.Optimizer):
    """Several torch optimizers stepped as one (for Lightning's automatic optimization).

    ``param_groups`` and ``state`` are computed from the parts on every access, because a part's
    ``load_state_dict`` replaces its group list and state dict with new objects; a scheduler that
    writes ``group["lr"]`` therefore writes into the parts' groups. ``Optimizer.__init__`` is not
    called (it would build groups of its own); only the bookkeeping it sets up is.
    """

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = OrderedDict(parts)
        self.defaults = {}
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self._warned_capturable_if_run_uncaptured = True

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.parts.values() for g in opt.param_groups]

    @property
    def state(self) -> _StateView:
        return _StateView(list(self.parts.values()))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()  # once: forward + backward for every part
        for opt in self.parts.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.parts):
            raise ValueError(
                f"optimizer state holds parts {sorted(state_dict)}, this optimizer has {sorted(self.parts)}"
                " (was the checkpoint written with another optim.name?)"
            )
        for name, opt in self.parts.items():
            opt.load_state_dict(state_dict[name])

    # plain object pickling (deepcopy, spawn): Optimizer's versions would store the views as attributes
    def __getstate__(self) -> dict:
        return self.__dict__.copy()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return "Combined(" + ", ".join(f"{n}={type(o).__name__}" for n, o in self.parts.items()) + ")"


# ------------------------------------------------------------------------------ the builder
def _adamw(params: list[torch.Tensor], o) -> torch.optim.AdamW:
    # the exact construction of adamw_with_schedule: decay on >= 2-D tensors, none on gains/biases
    return torch.optim.AdamW(
        [{"params": [p for p in params if p.dim() >= 2], "weight_decay": o.weight_decay},
         {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
        lr=o.lr, betas=tuple(o.betas),
    )


def build_optimizer(model_or_named_params: Union[nn.Module, Iterable[tuple[str, torch.Tensor]]], run) -> dict:
    """The optimizer and per-step scheduler that ``run.optim`` names, as Lightning expects them."""
    o = run.optim
    named = model_or_named_params
    if isinstance(named, nn.Module):
        named = named.named_parameters()
    named = list(named)
    if o.name == "adamw":
        opt = _adamw([p for _, p in named if p.requires_grad], o)
    else:  # muon; config validation admits no other name
        hidden, other = split_params(named)
        muon = torch.optim.Muon(
            [p for _, p in hidden], lr=o.muon_lr, momentum=o.muon_momentum,
            weight_decay=o.muon_weight_decay, adjust_lr_fn=o.muon_adjust_lr,
        )
        opt = Combined({"muon": muon, "adamw": _adamw([p for _, p in other], o)})
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(o, run.trainer.max_steps))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
