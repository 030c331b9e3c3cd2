"""Load a recipe: check its shape, every stage's kind, config and inputs, and resolve references.

Everything a typo can break fails here, at load time, with the path of the field in the recipe
(`stages[2].stages[0].config.lr: Input should be a valid number`), before any stage runs.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from posttrain.recipe.plan import Plan, PlannedStage
from posttrain.recipe.refs import Scope, Unresolved
from posttrain.recipe.schema import Recipe, RecipeError, RoundsBlock, StageSpec, validation_errors
from posttrain.recipe.secrets import redact
from posttrain.stages import registry
from posttrain.stages.base import Stage, StageConfig


def load_recipe(path: str | Path) -> Plan:
    """Read a recipe YAML file and resolve it into a Plan (RecipeError on any problem)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(str(path), [f"{path}: no such file"]) from None
    except yaml.YAMLError as err:
        raise RecipeError(str(path), [f"not valid YAML: {err}"]) from None
    return plan_recipe(data, source=str(path), base_dir=path.resolve().parent)


def plan_recipe(data: Any, source: str, base_dir: Path | None = None, flat: bool = False) -> Plan:
    """Validate recipe data (a dict, as parsed from YAML) and resolve it into a Plan."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as err:
        raise RecipeError(source, validation_errors(err)) from None
    errors: list[str] = []
    checked = _check_specs(recipe, errors)
    _check_unique_ids(recipe, errors)
    stages = _linearize(recipe, checked, Scope(base_dir), errors)
    if errors:
        raise RecipeError(source, errors)
    return Plan(
        name=recipe.name,
        seed=recipe.seed,
        max_quarantine_share=recipe.max_quarantine_share,
        stages=stages,
        resolved=_resolved(recipe, checked),
        source=source,
        flat=flat,
    )


def _specs(recipe: Recipe) -> list[tuple[str, StageSpec]]:
    """Every stage spec with its path in the recipe."""
    out = []
    for i, item in enumerate(recipe.stages):
        if isinstance(item, RoundsBlock):
            out.extend((f"stages[{i}].stages[{j}]", spec) for j, spec in enumerate(item.stages))
        else:
            out.append((f"stages[{i}]", item))
    return out


def _check_specs(recipe: Recipe, errors: list[str]) -> dict[str, tuple[type[Stage], StageConfig]]:
    """Kind, config and input names of each spec; returns the valid ones' class and config by path."""
    checked = {}
    for where, spec in _specs(recipe):
        if spec.kind not in registry.kinds():
            errors.append(f"{where}.kind: unknown stage kind {spec.kind!r}; allowed: {', '.join(registry.kinds())}")
            continue
        stage_cls = registry.get_stage(spec.kind)
        try:
            config = stage_cls.Config.model_validate(spec.config)
        except ValidationError as err:
            errors.extend(validation_errors(err, prefix=f"{where}.config"))
            continue
        allowed = stage_cls.inputs
        for name in spec.inputs:
            if name not in allowed:
                takes = ", ".join(sorted(allowed)) or "no inputs"
                errors.append(f"{where}.inputs.{name}: unknown input of kind {spec.kind!r}; it takes: {takes}")
        for name, required in allowed.items():
            if required and name not in spec.inputs:
                errors.append(f"{where}.inputs: missing required input {name!r} of kind {spec.kind!r}")
        checked[where] = (stage_cls, config)
    return checked


def _check_unique_ids(recipe: Recipe, errors: list[str]) -> None:
    """Ids are unique among top-level stages and within each rounds block."""
    top: set[str] = set()
    for i, item in enumerate(recipe.stages):
        if isinstance(item, RoundsBlock):
            seen: set[str] = set()
            for j, spec in enumerate(item.stages):
                if spec.id in seen:
                    errors.append(f"stages[{i}].stages[{j}].id: duplicate stage id {spec.id!r} in this rounds block")
                seen.add(spec.id)
        else:
            if item.id in top:
                errors.append(f"stages[{i}].id: duplicate top-level stage id {item.id!r}")
            top.add(item.id)


def _linearize(recipe: Recipe, checked: dict, scope: Scope, errors: list[str]) -> list[PlannedStage]:
    """Stages in run order, rounds unrolled (numbered across blocks), inputs resolved."""
    stages: list[PlannedStage] = []
    next_round = 1
    for i, item in enumerate(recipe.stages):
        if isinstance(item, RoundsBlock):
            for round_no in range(next_round, next_round + item.rounds):
                for j, spec in enumerate(item.stages):
                    where = f"stages[{i}].stages[{j}]"
                    stage = _instance(where, spec, round_no, recipe.seed, checked.get(where), scope, errors)
                    if stage is not None:
                        stages.append(dataclasses.replace(stage, index=len(stages)))
            next_round += item.rounds
        else:
            stage = _instance(f"stages[{i}]", item, 0, recipe.seed, checked.get(f"stages[{i}]"), scope, errors)
            if stage is not None:
                stages.append(dataclasses.replace(stage, index=len(stages)))
    return stages


def _instance(where: str, spec: StageSpec, round_no: int, recipe_seed: int, checked: tuple | None,
              scope: Scope, errors: list[str]) -> PlannedStage | None:
    """One stage instance with its inputs resolved, declared so that later stages can see it."""
    inputs = {}
    for name, value in spec.inputs.items():
        try:
            inputs[name] = scope.resolve(value, round_no)
        except Unresolved as err:
            in_round = f" (round {round_no})" if round_no else ""
            errors.append(f"{where}.inputs.{name}: stage {spec.id!r}{in_round}: {err}")
    label = f"round-{round_no}/{spec.id}" if round_no else spec.id
    scope.declare(round_no, spec.id, label)
    if checked is None:  # its kind or config was already reported
        return None
    stage_cls, config = checked
    seed = recipe_seed if spec.seed is None else spec.seed
    return PlannedStage(index=0, id=spec.id, kind=spec.kind, round=round_no, seed=seed, where=where,
                        stage_cls=stage_cls, config=config, inputs=inputs)


def _resolved(recipe: Recipe, checked: dict) -> dict[str, Any]:
    """The recipe as data, each config with its defaults filled in, secrets redacted."""

    def spec_data(where: str, spec: StageSpec) -> dict[str, Any]:
        data = spec.model_dump(mode="json", exclude_none=True)
        if not data["inputs"]:
            del data["inputs"]
        if where in checked:
            data["config"] = checked[where][1].model_dump(mode="json")
        return data

    items: list[dict[str, Any]] = []
    for i, item in enumerate(recipe.stages):
        if isinstance(item, RoundsBlock):
            block = [spec_data(f"stages[{i}].stages[{j}]", spec) for j, spec in enumerate(item.stages)]
            items.append({"rounds": item.rounds, "stages": block})
        else:
            items.append(spec_data(f"stages[{i}]", item))
    head = recipe.model_dump(mode="json", exclude={"stages"})
    return redact({**head, "stages": items})
