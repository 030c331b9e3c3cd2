"""The runner in-process: cache skips, what reruns after a change, --from-stage, resume, quarantine,
secrets, manifests and metrics."""
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
import fake_stages  # noqa: E402  (registers the fake stage kinds)

from posttrain.recipe import RecipeError, StageFailedError, run_recipe  # noqa: E402
from posttrain.recipe.console import RunConsole  # noqa: E402
from posttrain.recipe.secrets import is_secret_key, redact  # noqa: E402

QUIET = RunConsole(stream=open(os.devnull, "w"), rich=False)


def write_recipe(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def chain(tmp_path: Path, b_text: str = "x", ext: str = "ext.txt") -> Path:
    """a <- external file; b <- a; c <- b; d on its own."""
    return write_recipe(tmp_path / "r.yaml", {"name": "chain", "stages": [
        {"id": "a", "kind": "fake_write", "inputs": {"src": f"path:{ext}"}},
        {"id": "b", "kind": "fake_write", "inputs": {"src": "a"}, "config": {"text": b_text}},
        {"id": "c", "kind": "fake_write", "inputs": {"src": "b"}},
        {"id": "d", "kind": "fake_write"},
    ]})


def run(recipe, run_dir, **kwargs):
    return run_recipe(recipe, run_dir=run_dir, console=QUIET, **kwargs)


@pytest.fixture
def ext(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ext.txt"
    path.write_text("hello")
    return path


def test_rerun_skips_everything(tmp_path, ext):
    recipe, run_dir = chain(tmp_path), tmp_path / "run"
    first = run(recipe, run_dir)
    assert first.ran == ["a", "b", "c", "d"]
    assert (run_dir / "c" / "out.txt").read_text() == "c[x](b[x](a[x](hello)))"
    second = run(recipe, run_dir)
    assert second.ran == [] and second.skipped == ["a", "b", "c", "d"]
    assert fake_stages.calls(run_dir) == ["a", "b", "c", "d"]


def test_config_change_reruns_the_stage_and_downstream_only(tmp_path, ext):
    run_dir = tmp_path / "run"
    run(chain(tmp_path), run_dir)
    old_key = json.loads((run_dir / "b" / "manifest.json").read_text())["key"]
    summary = run(chain(tmp_path, b_text="y"), run_dir)
    assert summary.ran == ["b", "c"] and summary.skipped == ["a", "d"]
    assert (run_dir / "c" / "out.txt").read_text() == "c[x](b[y](a[x](hello)))"
    assert json.loads((run_dir / "b" / "manifest.json").read_text())["key"] != old_key


def test_external_file_change_changes_its_key(tmp_path, ext):
    run_dir = tmp_path / "run"
    run(chain(tmp_path), run_dir)
    ext.write_text("changed!")
    os.utime(ext, ns=(ext.stat().st_atime_ns, ext.stat().st_mtime_ns + 10**9))
    assert run(chain(tmp_path), run_dir).ran == ["a", "b", "c"]
    assert (run_dir / "c" / "out.txt").read_text() == "c[x](b[x](a[x](changed!)))"


def test_from_stage_reruns_it_and_its_dependents_from_scratch(tmp_path, ext):
    recipe, run_dir = chain(tmp_path), tmp_path / "run"
    run(recipe, run_dir)
    (run_dir / "b" / "leftover.tmp").write_text("from the earlier attempt")
    summary = run(recipe, run_dir, from_stage="b")
    assert summary.ran == ["b", "c"] and summary.skipped == ["a", "d"]
    assert not (run_dir / "b" / "leftover.tmp").exists()
    with pytest.raises(RecipeError, match="no stage 'zz' in recipe 'chain'; stages: a, b, c, d"):
        run(recipe, run_dir, from_stage="zz")


def test_rounds_from_stage_and_two_stages_of_one_kind(tmp_path, ext):
    recipe = write_recipe(tmp_path / "r.yaml", {"name": "rounds", "stages": [
        {"id": "data", "kind": "fake_write"},
        {"rounds": 3, "stages": [
            {"id": "w", "kind": "fake_write", "inputs": {"src": "prev/w|data"}},
            {"id": "w2", "kind": "fake_write", "inputs": {"src": "w"}, "config": {"text": "second"}},
        ]},
        {"id": "final", "kind": "fake_write", "inputs": {"src": "last/w2", "more": "all/w"}},
    ]})
    run_dir = tmp_path / "run"
    run(recipe, run_dir)
    assert (run_dir / "round-3" / "w2" / "out.txt").read_text().startswith("w2[second](w[x](w[x](w[x](data[x]()))))")
    final = (run_dir / "final" / "out.txt").read_text()
    assert final.count("w[x](") == 3 + 1 + 2 + 3  # last/w2 holds 3 nested w; all/w adds rounds 1, 2, 3
    assert run(recipe, run_dir, from_stage="round-2/w").ran == ["round-2/w", "round-2/w2", "round-3/w", "round-3/w2", "final"]
    assert run(recipe, run_dir, from_stage="w2").ran == ["round-1/w2", "round-2/w2", "round-3/w2", "final"]


def test_cut_off_attempt_with_same_key_is_kept_and_resumed(tmp_path, ext):
    recipe = write_recipe(tmp_path / "r.yaml", {"name": "slow", "stages": [
        {"id": "s", "kind": "fake_slow", "config": {"steps": 6, "sleep": 0.0}}]})
    run_dir = tmp_path / "run"
    run(recipe, run_dir)
    key = json.loads((run_dir / "s" / "manifest.json").read_text())["key"]
    # Make it look cut off at step 4: no _DONE, progress kept.
    (run_dir / "s" / "_DONE").unlink()
    (run_dir / "s" / "progress.txt").write_text("4")
    run(recipe, run_dir)
    assert fake_stages.calls(run_dir) == ["s start=0", "s start=4"]
    manifest = json.loads((run_dir / "s" / "manifest.json").read_text())
    assert manifest["resumed"] is True and manifest["key"] == key
    # A cut-off attempt with another key is wiped instead.
    (run_dir / "s" / "_DONE").unlink()
    (run_dir / "s" / "_KEY").write_text("other")
    run(recipe, run_dir)
    assert fake_stages.calls(run_dir)[-1] == "s start=0"


def test_manifest_counts_metrics_and_quarantine_files(tmp_path, ext):
    recipe = write_recipe(tmp_path / "r.yaml", {"name": "q", "stages": [
        {"id": "q", "kind": "fake_quarantine", "config": {"bad": 3}},
        {"id": "s", "kind": "fake_slow", "seed": 7, "config": {"steps": 3, "sleep": 0.0}}]})
    run_dir = tmp_path / "run"
    run(recipe, run_dir)
    manifest = json.loads((run_dir / "q" / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["kind"] == "fake_quarantine" and manifest["round"] == 0
    assert manifest["counts"]["quarantined"] == 3 and manifest["counts"]["dropped"] == 2
    assert manifest["counts"]["quarantined_by_reason"] == {"missing_field": 2, "bad_json": 1}
    assert manifest["counts"]["dropped_by_reason"] == {"too_long": 2}
    assert manifest["key_components"]["config"] == {"total": 100, "bad": 3, "too_long": 2}
    assert manifest["duration_s"] >= 0 and manifest["started"] <= manifest["finished"]
    assert len((run_dir / "q" / "quarantine.jsonl").read_text().splitlines()) == 3
    assert (run_dir / "q" / "_DONE").read_text().strip() == manifest["key"]
    assert not list(run_dir.rglob("*.tmp-*"))  # atomic writes leave no temporaries
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["round"], r["step"]) for r in rows] == [("s", 0, 1), ("s", 0, 2), ("s", 0, 3)]
    assert all(isinstance(r["time"], float) for r in rows)
    assert json.loads((run_dir / "s" / "manifest.json").read_text())["seed"] == 7


def test_quarantine_threshold_fails_the_stage_with_a_clear_message(tmp_path, ext):
    recipe = write_recipe(tmp_path / "r.yaml", {"name": "q", "stages": [
        {"id": "q", "kind": "fake_quarantine", "config": {"bad": 30}}, {"id": "after", "kind": "fake_write"}]})
    run_dir = tmp_path / "run"
    reports = []
    with pytest.raises(StageFailedError) as info:
        run(recipe, run_dir, after_run=reports.append)
    message = str(info.value)
    assert "stage q (fake_quarantine)" in message
    assert "30 of 100 input rows (30.0%) were quarantined, more than the allowed 5.0%" in message
    assert reports == [run_dir.resolve()]  # the end-of-run hook (report) runs after a failure too
    manifest = json.loads((run_dir / "q" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "QuarantineThresholdError" in manifest["error"]
    assert not (run_dir / "q" / "_DONE").exists() and not (run_dir / "after").exists()
    # Raising the threshold (not part of any key) lets the same stage pass.
    data = yaml.safe_load(recipe.read_text())
    data["max_quarantine_share"] = 0.5
    assert run(write_recipe(recipe, data), run_dir).ran == ["q", "after"]


def test_secrets_are_redacted_everywhere_and_left_out_of_keys(tmp_path, ext):
    secret = "sk-live-0123456789"
    data = {"name": "sec", "stages": [{"id": "a", "kind": "fake_write", "config": {"api_key": secret, "hf_token": "hf_abc"}}]}
    run_dir = tmp_path / "run"
    run(write_recipe(tmp_path / "r.yaml", data), run_dir)
    from posttrain.report import render_report

    render_report(run_dir)
    for path in run_dir.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert secret not in text and "hf_abc" not in text, path
    manifest = json.loads((run_dir / "a" / "manifest.json").read_text())
    assert manifest["config"]["api_key"] == "***"
    assert "api_key" not in manifest["key_components"]["config"]
    data["stages"][0]["config"]["api_key"] = "sk-rotated"  # rotating a key must not rerun anything
    assert run(write_recipe(tmp_path / "r.yaml", data), run_dir).ran == []


def test_secret_key_names():
    for name in ("api_key", "openai_api_key", "hf_token", "access_token", "client_secret", "Authorization", "password"):
        assert is_secret_key(name), name
    for name in ("pad_token", "eos_token", "max_tokens", "lr", "model"):
        assert not is_secret_key(name), name
    assert redact({"a": [{"api_key": "k", "n": 1}], "password": None}) == {"a": [{"api_key": "***", "n": 1}], "password": None}


def test_stage_error_is_wrapped_and_a_fixed_config_reruns(tmp_path, ext):
    data = {"name": "f", "stages": [{"id": "ok", "kind": "fake_write"}, {"id": "bad", "kind": "fake_write", "config": {"fail": True}}]}
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailedError, match="stage bad \\(fake_write\\) failed: RuntimeError: asked to fail"):
        run(write_recipe(tmp_path / "r.yaml", data), run_dir)
    data["stages"][1]["config"]["fail"] = False
    summary = run(write_recipe(tmp_path / "r.yaml", data), run_dir)
    assert summary.ran == ["bad"] and summary.skipped == ["ok"]


def test_refuses_to_wipe_a_directory_it_did_not_write(tmp_path, ext):
    run_dir = tmp_path / "run"
    (run_dir / "a").mkdir(parents=True)
    (run_dir / "a" / "precious.txt").write_text("mine")
    recipe = write_recipe(tmp_path / "r.yaml", {"name": "w", "stages": [{"id": "a", "kind": "fake_write"}]})
    with pytest.raises(RuntimeError, match="not written by posttrain"):
        run(recipe, run_dir)
    assert (run_dir / "a" / "precious.txt").read_text() == "mine"
