"""Corpora; each module here registers one (``data=NAME``) and yields an HF ``datasets.Dataset``
with a ``text`` column, one row per document."""
