"""The stage graph a recipe resolves to: stages in run order, each input bound to artifacts."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from posttrain.recipe.schema import RecipeError
from posttrain.stages.base import Stage, StageConfig


@dataclasses.dataclass(frozen=True)
class InputRef:
    """One artifact bound to an input: another stage's output (`stage`) or an external `path`."""

    ref: str  # the alternative that resolved, as written: "prev/sft", "path:data.jsonl"
    stage: str | None = None  # label of the producing stage
    path: Path | None = None  # absolute external path


@dataclasses.dataclass
class PlannedStage:
    """A stage instance: a top-level stage, or one round of a stage in a rounds block."""

    index: int  # position in run order
    id: str
    kind: str
    round: int  # 0 outside rounds blocks
    seed: int
    where: str  # the recipe path of its spec, e.g. "stages[2].stages[0]"
    stage_cls: type[Stage]
    config: StageConfig
    inputs: dict[str, list[InputRef]]

    @property
    def label(self) -> str:
        """`sft` for a top-level stage, `round-2/sft` for a round stage; also its directory under the run."""
        return f"round-{self.round}/{self.id}" if self.round else self.id

    def upstream(self) -> list[str]:
        """Labels of the stages whose outputs this one reads."""
        return [ref.stage for refs in self.inputs.values() for ref in refs if ref.stage is not None]


@dataclasses.dataclass
class Plan:
    """A loaded recipe: its settings and its stages in run order.

    `flat` runs a single stage directly in the run directory (the standalone per-kind command).
    """

    name: str
    seed: int
    max_quarantine_share: float
    stages: list[PlannedStage]
    resolved: dict[str, Any]  # the recipe with defaults filled in and secrets redacted (-> recipe.yaml)
    source: str
    flat: bool = False

    def by_label(self) -> dict[str, PlannedStage]:
        return {stage.label: stage for stage in self.stages}

    def stage_dir(self, run_dir: Path, stage: PlannedStage) -> Path:
        return run_dir if self.flat else run_dir / stage.label

    def select(self, name: str) -> list[PlannedStage]:
        """Stages `name` means: a label (`data`, `round-2/sft`), or a round stage's id (every round of it)."""
        exact = [stage for stage in self.stages if stage.label == name]
        if exact:
            return exact
        matches = [stage for stage in self.stages if stage.round and stage.id == name]
        if not matches:
            labels = ", ".join(stage.label for stage in self.stages)
            raise RecipeError(self.source, [f"no stage {name!r} in recipe {self.name!r}; stages: {labels}"])
        return matches

    def downstream(self, labels: set[str]) -> set[str]:
        """`labels` and every stage that depends on one of them, transitively."""
        closed = set(labels)
        for stage in self.stages:  # run order: producers come before consumers
            if any(up in closed for up in stage.upstream()):
                closed.add(stage.label)
        return closed
