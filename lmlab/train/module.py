"""Moved: the LightningModules live in ``lmlab.tasks`` (``base.TaskModule``, ``lm.LMModule``); these
names stay importable from here for one release (benchmarks and older scripts)."""

from lmlab.tasks.base import adamw_with_schedule, lr_lambda
from lmlab.tasks.lm import LMModule

__all__ = ["LMModule", "adamw_with_schedule", "lr_lambda"]
