"""lmlab: a config-driven lab bench for small language-model experiments.

Shape legend used in comments across the package:
  B batch, T time (sequence) , S cached/key length, H query heads, G key/value heads,
  D head dim, C model width (d_model), V vocabulary, A position axes (1 text, 2 image, 3 video).
"""

__version__ = "0.1.0"
