"""Stage `merge` through the real CLI on two tiny random models (and a base)."""
import json
import typing
from pathlib import Path

import pytest
import torch
from _merge_fixtures import base_model, read_tensors, save, variant

from posttrain.cli import main

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stage_models")
    base = base_model(seed=0)
    return {"base": save(base, root / "base"), "a": save(variant(base, 1), root / "a"),
            "b": save(variant(base, 2), root / "b")}


def test_method_names_match_the_registry():
    from posttrain.merge.methods import METHODS
    from posttrain.stages.merge import MethodName

    assert set(typing.get_args(MethodName)) == set(METHODS)


def test_cli_merges_two_models_and_writes_a_manifest(dirs, tmp_path):
    out = tmp_path / "merged"
    args = ["merge", "--input", f"models={dirs['a']}", "--input", f"models={dirs['b']}", "--out", str(out),
            "--set", "method=linear", "--set", "weights=[1, 3]"]
    assert main(args) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["models"] == 2 and manifest["metrics"]["method"] == "linear"
    assert manifest["metrics"]["params"] == {"weights": [1.0, 3.0]}
    a, b, merged = read_tensors(dirs["a"]), read_tensors(dirs["b"]), read_tensors(out / "model")
    assert all(torch.allclose(merged[name], (a[name] + 3 * b[name]) / 4, atol=1e-7) for name in a)
    assert (out / "_DONE").exists()


def test_cli_task_vector_merge_with_a_base_and_a_config_file(dirs, tmp_path):
    config = tmp_path / "merge.yaml"
    config.write_text("method: task_arithmetic\nlambda: 0.5\ndtype: bfloat16\ntokenizer_source: base\n")
    out = tmp_path / "merged"
    args = ["merge", "--config", str(config), "--input", f"models={dirs['a']}", "--input", f"models={dirs['b']}",
            "--input", f"base={dirs['base']}", "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads((out / "manifest.json").read_text())["metrics"]
    assert metrics["params"] == {"weights": None, "scale": 0.5} and metrics["dtype"] == "bfloat16"
    a, b, base, merged = (read_tensors(p) for p in (dirs["a"], dirs["b"], dirs["base"], out / "model"))
    name = "model.layers.1.mlp.down_proj.weight"
    expected = base[name] + 0.5 * ((a[name] - base[name]) + (b[name] - base[name]))
    assert torch.equal(merged[name], expected.to(torch.bfloat16))


def test_cli_reports_a_validation_error_without_an_artifact(dirs, tmp_path):
    out = tmp_path / "merged"
    args = ["merge", "--input", f"models={dirs['a']}", "--input", f"models={dirs['b']}", "--out", str(out),
            "--set", "method=ties"]
    assert main(args) != 0
    assert not (out / "_DONE").exists()
