"""Leave the lab and come back: export lmlab checkpoints as ``transformers`` directories
(``lmlab.interop.export``), start lmlab models from local ``transformers`` directories
(``lmlab.interop.imports``). See docs/interop.md.

The conversion is a weight mapping, not new math: each supported lmlab configuration computes the
same function as its peer architecture (Llama, Qwen2, Qwen3, DeepSeek-V3 dense, GPT-2); everything else is
refused with an ``InteropError`` naming the part no peer architecture has.
"""

from __future__ import annotations

from lmlab.errors import LmlabError


class InteropError(LmlabError, ValueError):
    """One line: what does not map, and why."""
