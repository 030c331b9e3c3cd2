"""Cache keys: when a stage's artifact can be reused.

A stage's key is the sha256 of: its kind, the stage class `version`, `posttrain.__version__`, its
resolved config as JSON (defaults filled in, secrets left out), its seed, and the keys of its inputs
in order. An input that is another stage's artifact contributes that stage's key, so keys chain: a
change anywhere upstream changes every key downstream of it, and nothing else. An external input
(`path:`) contributes a hash of (relative path, size, mtime_ns) of every file under it.

Bump a stage kind's `version` whenever its output for the same config and inputs would change
(a bug fix, a new default inside `run`); otherwise old artifacts are reused.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import posttrain
from posttrain.recipe.plan import PlannedStage
from posttrain.recipe.secrets import strip_secrets


def _sha256(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def external_key(path: Path) -> str:
    """Hash of (relative path, size, mtime_ns) of each file under `path` (or of `path` itself)."""
    path = Path(path)
    entries = []
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = Path(root) / name
                st = full.stat()
                entries.append([full.relative_to(path).as_posix(), st.st_size, st.st_mtime_ns])
    else:
        st = path.stat()
        entries.append([path.name, st.st_size, st.st_mtime_ns])
    return _sha256(entries)


def key_components(stage: PlannedStage, stage_keys: dict[str, str]) -> dict[str, Any]:
    """What a stage's key hashes; `stage_keys` maps labels of earlier stages to their keys."""
    inputs = []
    for name, refs in stage.inputs.items():
        keys = [stage_keys[ref.stage] if ref.stage is not None else external_key(ref.path) for ref in refs]
        inputs.append([name, keys])
    return {
        "kind": stage.kind,
        "stage_version": stage.stage_cls.version,
        "posttrain_version": posttrain.__version__,
        "config": strip_secrets(stage.config.model_dump(mode="json")),
        "seed": stage.seed,
        "inputs": inputs,
    }


def cache_key(components: dict[str, Any]) -> str:
    """The sha256 hex digest of a stage's key components."""
    return _sha256(components)


def plan_keys(stages: list[PlannedStage]) -> dict[str, tuple[str, dict[str, Any]]]:
    """label -> (key, components) for every stage, in run order (so upstream keys exist first)."""
    keys: dict[str, str] = {}
    out = {}
    for stage in stages:
        components = key_components(stage, keys)
        keys[stage.label] = cache_key(components)
        out[stage.label] = (keys[stage.label], components)
    return out
