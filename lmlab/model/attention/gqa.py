"""Grouped-query attention (Ainslie et al. 2023): ``n_kv_head`` key/value groups shared by the heads. SPEC §9.

Design: GQA is MHA with fewer key/value heads; the layer only overrides ``kv_head_count`` and keeps MHA's
projections, position hooks and cache. Head s reads group ⌊s·g/h⌋ (consecutive heads share a group,
the ``repeat_interleave`` layout of ``kernels.attention``).

Guarantees (tests/test_attention_zoo.py): with ``n_kv_head = n_head`` the layer *is* MHA (same
parameter names and shapes, same outputs); with one group it equals MQA; with g groups it equals MHA
whose key/value weights are copied within each group. Cache per token per layer: 2·g·d_k.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.model.attention.base import AttentionConfig
from lmlab.model.attention.mha import MHA
from lmlab.registry import ATTENTION


@dataclass
class GQAConfig(AttentionConfig):
    name: str = "gqa"
    n_kv_head: int = 2

    def check(self, run) -> list[str]:
        p = super().check(run)
        if self.n_kv_head <= 0:
            p.append(f"attention.n_kv_head={self.n_kv_head} must be positive")
        elif run.model.n_head % self.n_kv_head:
            p.append(f"attention.n_kv_head={self.n_kv_head} does not divide model.n_head={run.model.n_head}")
        return p


@ATTENTION.register("gqa")
class GQA(MHA):
    Config = GQAConfig

    def kv_head_count(self) -> int:
        return self.cfg.n_kv_head
