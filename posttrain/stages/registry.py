"""Stage kinds by name. Entries are "module:Class" strings, imported on first use, so that listing
kinds and validating a recipe never imports torch.

Plugins: the environment variable `POSTTRAIN_PLUGINS` names modules (comma-separated) that
`load_plugins()` imports; such a module calls `register(kind, cls)` to add its stage kinds.
"""
from __future__ import annotations

import importlib
import os

from posttrain.stages.base import Stage

_KINDS: dict[str, str] = {
    # kind: "module:Class"  (one line per stage kind)
    "prepare_data": "posttrain.stages.prepare_data:PrepareData",
    "tinyworld_data": "posttrain.stages.tinyworld_data:TinyWorldData",
    "tinyworld_pretrain": "posttrain.stages.tinyworld_pretrain:TinyWorldPretrain",
    "sft": "posttrain.stages.sft:SFT",
    "evaluate": "posttrain.stages.evaluate:Evaluate",
    "merge": "posttrain.stages.merge:Merge",
    "generate": "posttrain.stages.generate:Generate",
    "rejection_sampling": "posttrain.stages.rejection_sampling:RejectionSampling",
    "judge": "posttrain.stages.judge:Judge",
    "pairs": "posttrain.stages.pairs:Pairs",
    "dpo": "posttrain.stages.dpo:DPO",
    "reward_model": "posttrain.stages.reward_model:RewardModel",
}
_LOADED: dict[str, type[Stage]] = {}

PLUGINS_ENV = "POSTTRAIN_PLUGINS"


def register(kind: str, cls: type[Stage]) -> None:
    """Register a stage class directly (plugins, tests)."""
    _LOADED[kind] = cls
    _KINDS.setdefault(kind, f"{cls.__module__}:{cls.__qualname__}")


def kinds() -> list[str]:
    """Every known stage kind, sorted."""
    return sorted(set(_KINDS) | set(_LOADED))


def get_stage(kind: str) -> type[Stage]:
    """The stage class of `kind`, importing its module on first use."""
    if kind in _LOADED:
        return _LOADED[kind]
    if kind not in _KINDS:
        raise KeyError(f"unknown stage kind {kind!r}; known kinds: {', '.join(kinds())}")
    module_name, _, class_name = _KINDS[kind].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    _LOADED[kind] = cls
    return cls


def load_plugins(spec: str | None = None) -> list[str]:
    """Import the plugin modules named in `spec` (default: $POSTTRAIN_PLUGINS); returns their names."""
    if spec is None:
        spec = os.environ.get(PLUGINS_ENV, "")
    names = [name.strip() for name in spec.split(",") if name.strip()]
    for name in names:
        importlib.import_module(name)
    return names
