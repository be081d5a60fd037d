"""Moved: the LightningModules live in ``lmlab.tasks`` (``base.TaskModule``, ``lm.LMModule``), the optimizer
builder in ``lmlab.optim``; ``LMModule`` stays importable from here for one release."""

from lmlab.tasks.lm import LMModule

__all__ = ["LMModule"]
