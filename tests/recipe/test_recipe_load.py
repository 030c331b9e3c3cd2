"""Load-time checks: field paths in errors, allowed kinds and values, inputs, ids, and references."""
import copy
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
import fake_stages  # noqa: E402,F401  (registers the fake stage kinds)

from posttrain.recipe import RecipeError, load_recipe, plan_recipe  # noqa: E402


def errors_of(data, tmp_path=None) -> list[str]:
    with pytest.raises(RecipeError) as info:
        plan_recipe(data, source="test.yaml", base_dir=tmp_path)
    return info.value.errors


def inputs_of(plan, label: str) -> dict[str, list[str]]:
    """input name -> labels of the stages it reads (or paths of external inputs)."""
    stage = plan.by_label()[label]
    return {name: [ref.stage or str(ref.path) for ref in refs] for name, refs in stage.inputs.items()}


def test_config_error_names_the_field_path():
    data = {"name": "r", "stages": [
        {"id": "a", "kind": "fake_write"},
        {"rounds": 2, "stages": [{"id": "w", "kind": "fake_write", "config": {"lr": "fast"}}]},
    ]}
    errors = errors_of(data)
    assert len(errors) == 1  # reported once, not once per round
    assert errors[0].startswith("stages[1].stages[0].config.lr: Input should be a valid number")


def test_unknown_kind_lists_allowed_kinds_and_bad_literal_lists_values():
    data = {"name": "r", "stages": [
        {"id": "a", "kind": "fake_wrte"},
        {"id": "b", "kind": "fake_write", "config": {"mode": "c", "lrr": 1}},
    ]}
    errors = errors_of(data)
    unknown = next(e for e in errors if e.startswith("stages[0].kind"))
    assert "unknown stage kind 'fake_wrte'" in unknown and "fake_write" in unknown and "fake_slow" in unknown
    assert "stages[1].config.mode: Input should be 'a' or 'b'" in errors
    assert "stages[1].config.lrr: Extra inputs are not permitted" in errors


def test_recipe_shape_errors_have_paths():
    data = {"name": "r", "seed": "x", "stages": [{"id": "a", "kind": "fake_write", "colour": 1}, {"rounds": 0, "stages": []}]}
    errors = errors_of(data)
    assert any(e.startswith("seed: ") for e in errors)
    assert "stages[0].colour: Extra inputs are not permitted" in errors
    assert any(e.startswith("stages[1].rounds: Input should be greater than or equal to 1") for e in errors)
    assert any(e.startswith("stages[1].stages: List should have at least 1 item") for e in errors)


def test_inputs_are_checked_against_the_kind():
    data = {"name": "r", "stages": [{"id": "e", "kind": "fake_scores", "inputs": {"modle": "path:/"}}]}
    errors = errors_of(data)
    assert "stages[0].inputs.modle: unknown input of kind 'fake_scores'; it takes: model" in errors
    assert "stages[0].inputs: missing required input 'model' of kind 'fake_scores'" in errors


def test_ids_unique_per_scope():
    dup = {"name": "r", "stages": [{"id": "a", "kind": "fake_write"}, {"id": "a", "kind": "fake_write"}]}
    assert errors_of(dup) == ["stages[1].id: duplicate top-level stage id 'a'"]
    in_block = {"name": "r", "stages": [{"rounds": 1, "stages": [{"id": "w", "kind": "fake_write"}] * 2}]}
    assert errors_of(in_block) == ["stages[0].stages[1].id: duplicate stage id 'w' in this rounds block"]
    # The same id at the top level and inside a block is fine: different scopes.
    plan = plan_recipe({"name": "r", "stages": [{"id": "w", "kind": "fake_write"},
                                                {"rounds": 1, "stages": [{"id": "w", "kind": "fake_write", "inputs": {"src": "w"}}]}]},
                       source="t")
    assert inputs_of(plan, "round-1/w") == {"src": ["w"]}  # not declared earlier in the round: the top-level one


ROUNDS = {
    "name": "r",
    "stages": [
        {"id": "data", "kind": "fake_write"},
        {"rounds": 3, "stages": [
            {"id": "sft", "kind": "fake_write", "inputs": {"src": "prev/sft|data", "more": "data"}},
            {"id": "eval", "kind": "fake_write", "inputs": {"src": "sft", "more": ["all/eval"]}},
        ]},
        {"id": "final", "kind": "fake_write", "inputs": {"src": "last/sft", "more": ["r1/eval", "all/eval"]}},
        {"rounds": 1, "stages": [{"id": "sft", "kind": "fake_write", "inputs": {"src": "prev/sft"}}]},
    ],
}


def test_cross_round_references():
    ok = copy.deepcopy(ROUNDS)
    ok["stages"][1]["stages"][1]["inputs"]["more"] = ["prev/eval|data", "all/sft"]
    plan = plan_recipe(ok, source="t")
    labels = [s.label for s in plan.stages]
    assert labels == ["data", "round-1/sft", "round-1/eval", "round-2/sft", "round-2/eval",
                      "round-3/sft", "round-3/eval", "final", "round-4/sft"]
    assert inputs_of(plan, "round-1/sft") == {"src": ["data"], "more": ["data"]}  # prev/ falls back in round 1
    assert inputs_of(plan, "round-2/sft")["src"] == ["round-1/sft"]
    assert inputs_of(plan, "round-2/eval") == {"src": ["round-2/sft"], "more": ["round-1/eval", "round-1/sft", "round-2/sft"]}
    assert inputs_of(plan, "final") == {"src": ["round-3/sft"], "more": ["round-1/eval", "round-1/eval", "round-2/eval", "round-3/eval"]}
    assert inputs_of(plan, "round-4/sft") == {"src": ["round-3/sft"]}  # rounds count on across blocks
    assert plan.by_label()["round-2/sft"].upstream() == ["round-1/sft", "data"]


def test_all_only_sees_declared_rounds_and_unresolved_names_stage_and_reference():
    # In round 1, all/eval names no eval yet (eval comes later in the block): an error, not an empty list.
    errors = errors_of(ROUNDS)
    assert errors == ["stages[1].stages[1].inputs.more: stage 'eval' (round 1): cannot resolve 'all/eval' "
                      "(all/eval: no round declares 'eval' before this stage)"]
    bad = {"name": "r", "stages": [{"id": "a", "kind": "fake_write", "inputs": {"src": "prev/a|b"}}]}
    (error,) = errors_of(bad)
    assert error.startswith("stages[0].inputs.src: stage 'a': cannot resolve 'prev/a|b'")
    assert "no stage 'b' in the top level" in error


def test_external_path_resolves_from_cwd_first_then_recipe_dir(tmp_path, monkeypatch):
    recipe_dir = tmp_path / "recipes"
    recipe_dir.mkdir()
    (recipe_dir / "in.txt").write_text("beside the recipe")
    recipe = recipe_dir / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "stages": [{"id": "a", "kind": "fake_write", "inputs": {"src": "path:in.txt"}}]}))
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert inputs_of(load_recipe(recipe), "a") == {"src": [str(recipe_dir / "in.txt")]}
    (cwd / "in.txt").write_text("in the working directory")
    assert inputs_of(load_recipe(recipe), "a") == {"src": [str(cwd / "in.txt")]}
    (cwd / "in.txt").unlink()
    (recipe_dir / "in.txt").unlink()
    with pytest.raises(RecipeError, match="stages\\[0\\].inputs.src: stage 'a': cannot resolve 'path:in.txt'.*no such file"):
        load_recipe(recipe)


def test_resolved_recipe_fills_defaults_and_redacts_secrets():
    plan = plan_recipe({"name": "r", "stages": [{"id": "a", "kind": "fake_write", "config": {"api_key": "sk-live-1"}}]}, source="t")
    config = plan.resolved["stages"][0]["config"]
    assert config["api_key"] == "***" and config["lr"] == 1.0 and config["mode"] == "a"
    assert plan.stages[0].config.api_key == "sk-live-1"  # the stage itself still gets the real value


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RecipeError, match="no such file"):
        load_recipe(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(bad)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_loads(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # `path:` inputs are relative to the repository root
    assert load_recipe(path).stages
