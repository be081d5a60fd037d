"""Multi-query attention (Shazeer 2019): one key/value head shared by all query heads. SPEC §9.

Design: GQA with a single group, so it shares every line of MHA except ``kv_head_count``. Cache per token
per layer: 2·d_k, independent of the number of heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.model.attention.base import AttentionConfig
from lmlab.model.attention.gqa import GQA
from lmlab.registry import ATTENTION


@dataclass
class MQAConfig(AttentionConfig):
    name: str = "mqa"


@ATTENTION.register("mqa")
class MQA(GQA):
    Config = MQAConfig

    def kv_head_count(self) -> int:
        return 1
