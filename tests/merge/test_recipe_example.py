"""recipes/merge-example.yaml validates: two SFT variants, their merge and three evaluations."""
from pathlib import Path

import yaml

from posttrain.recipe import plan_recipe

ROOT = Path(__file__).resolve().parents[2]


def test_merge_example_recipe_plans(tmp_path):
    text = (ROOT / "recipes" / "merge-example.yaml").read_text()
    base = tmp_path / "base_model"  # the shipped base model may not be built yet: any directory resolves
    base.mkdir()
    (base / "config.json").write_text("{}")
    data = yaml.safe_load(text.replace("path:posttrain/tinyworld/base_model", f"path:{base}"))
    plan_recipe(data, source="merge-example.yaml", base_dir=ROOT)
    stages = {s["id"]: s for s in data["stages"]}
    assert stages["sft_a"]["config"]["seed"] != stages["sft_b"]["config"]["seed"]
    assert stages["merged"]["kind"] == "merge" and stages["merged"]["inputs"]["models"] == ["sft_a", "sft_b"]
    assert {stages[f"eval_{s}"]["inputs"]["model"] for s in ("sft_a", "sft_b", "merged")} == {"sft_a", "sft_b", "merged"}
