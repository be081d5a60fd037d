"""Name -> class registries that the config groups resolve through.

A variant registers itself with a decorator in its own module; the package ``__init__`` of each
variant folder imports every module in it, so adding a variant is one Python file plus one yaml.
Each registered class carries its own small config dataclass as ``Config`` (validated at start-up,
see ``lmlab.config``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from lmlab.errors import LmlabError

T = TypeVar("T")


class UnknownVariantError(LmlabError, KeyError):
    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str, package: str):
        self.kind = kind
        self.package = package  # imported on first lookup, so every variant has registered
        self._entries: dict[str, type[T]] = {}
        self._loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            import_submodules(self.package)

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def deco(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self._entries[name] = cls
            cls.registry_name = name  # type: ignore[attr-defined]
            return cls

        return deco

    def get(self, name: str) -> type[T]:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownVariantError(
                f"unknown {self.kind} '{name}'; available: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries


ATTENTION: Registry = Registry("attention", "lmlab.model.attention")
POS: Registry = Registry("pos", "lmlab.model.pos")
TOKENIZER: Registry = Registry("tokenizer", "lmlab.tokenizers")
DATA: Registry = Registry("data", "lmlab.data.sources")
TASK: Registry = Registry("task", "lmlab.tasks")


def import_submodules(package_name: str) -> None:
    """Import every module of a package so that its variants register themselves."""
    import importlib
    import pkgutil

    pkg = importlib.import_module(package_name)
    for info in pkgutil.iter_modules(pkg.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
