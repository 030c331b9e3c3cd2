"""The contract between the recipe runner and a stage kind.

A stage kind is a class with a `kind` name, a `version` (bumped whenever its output for the same
config and inputs would change: it is part of the cache key), a pydantic `Config` and a `run`
method. Stage modules import only pydantic at module level; torch and friends are imported inside
`run`, so loading and validating a recipe stays fast and torch-free.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict

from posttrain.data.quarantine import RowLog


class StageConfig(BaseModel):
    """Base of every stage's config: unknown fields are errors, so a typo fails at load time."""

    model_config = ConfigDict(extra="forbid")


@dataclasses.dataclass
class StageContext:
    """What a running stage gets from the runner."""

    run_dir: Path
    out_dir: Path  # this stage's artifact directory; may hold a cut-off attempt with the same key (resume from it)
    stage_id: str
    round: int  # 0 for stages outside a `rounds` block
    seed: int
    inputs: dict[str, list[Path]]  # input name -> artifact directories (or external paths), in reference order
    quarantine: RowLog  # malformed input rows (file, line, field, reason) -> out_dir/quarantine.jsonl
    dropped: RowLog  # rows dropped by policy (too long, filtered) -> out_dir/dropped.jsonl
    log_metrics: Callable[[dict[str, Any]], None]  # appends a row to runs/<name>/metrics.jsonl
    max_quarantine_share: float = 0.05

    def input(self, name: str) -> Path:
        """The single artifact bound to input `name`."""
        paths = self.inputs.get(name)
        if not paths:
            raise KeyError(f"stage {self.stage_id!r} needs input {name!r}; the recipe binds: {sorted(self.inputs)}")
        if len(paths) != 1:
            raise ValueError(f"stage {self.stage_id!r}: input {name!r} has {len(paths)} artifacts, expected one")
        return paths[0]

    def inputs_of(self, name: str, required: bool = True) -> list[Path]:
        """All artifacts bound to input `name` (e.g. the pairs of every round so far)."""
        paths = self.inputs.get(name, [])
        if required and not paths:
            raise KeyError(f"stage {self.stage_id!r} needs input {name!r}; the recipe binds: {sorted(self.inputs)}")
        return list(paths)


@dataclasses.dataclass
class StageResult:
    """What a stage reports; the runner writes it into manifest.json with timings and the cache key."""

    counts: dict[str, int] = dataclasses.field(default_factory=dict)  # e.g. input_rows, output_rows
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)  # final numbers shown in the report
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> path relative to out_dir


class Stage:
    """Base class of a stage kind."""

    kind: ClassVar[str]
    version: ClassVar[int] = 1
    Config: ClassVar[type[StageConfig]] = StageConfig
    # input name -> required? The runner checks a recipe binds every required input at load time.
    inputs: ClassVar[dict[str, bool]] = {}
    description: ClassVar[str] = ""
    # Under torchrun: True = every rank runs it (training: the ranks meet in the engine's process group);
    # False = rank 0 runs it alone and the other ranks wait (posttrain.recipe.ranks).
    distributed: ClassVar[bool] = False

    def run(self, config: StageConfig, ctx: StageContext) -> StageResult:  # pragma: no cover - interface
        raise NotImplementedError
