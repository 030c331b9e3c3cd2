"""Stage kinds by name. Entries are "module:Class" strings, imported on first use, so that listing
kinds and validating a recipe never imports torch."""
from __future__ import annotations

import importlib

from posttrain.stages.base import Stage

_KINDS: dict[str, str] = {
    # kind: "module:Class"  (one line per stage kind)
}
_LOADED: dict[str, type[Stage]] = {}


def register(kind: str, cls: type[Stage]) -> None:
    """Register a stage class directly (plugins, tests)."""
    _LOADED[kind] = cls
    _KINDS.setdefault(kind, f"{cls.__module__}:{cls.__qualname__}")


def kinds() -> list[str]:
    return sorted(set(_KINDS) | set(_LOADED))


def get_stage(kind: str) -> type[Stage]:
    if kind in _LOADED:
        return _LOADED[kind]
    if kind not in _KINDS:
        raise KeyError(f"unknown stage kind {kind!r}; known kinds: {', '.join(kinds())}")
    module_name, _, class_name = _KINDS[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    _LOADED[kind] = cls
    return cls
