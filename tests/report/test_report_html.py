"""The HTML report: per-stage tables, metric plots, score comparison, escaped failure examples."""
import base64
import json
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
import fake_stages  # noqa: E402,F401  (registers the fake stage kinds)

from posttrain.recipe import StageFailedError, run_recipe  # noqa: E402
from posttrain.recipe.console import RunConsole  # noqa: E402
from posttrain.report import render_report  # noqa: E402
from posttrain.report.rundir import StageView, read_stages, stage_series  # noqa: E402

QUIET = RunConsole(stream=open(os.devnull, "w"), rich=False)


def images(html: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)]


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    recipe = tmp / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "rep", "stages": [
        {"id": "q", "kind": "fake_quarantine", "config": {"bad": 2}},
        {"rounds": 2, "stages": [
            {"id": "train", "kind": "fake_slow", "config": {"steps": 4, "sleep": 0.0}},
            {"id": "eval", "kind": "fake_scores", "inputs": {"model": "train"}, "config": {"score": 0.3}},
        ]},
    ]}, sort_keys=False))
    run_dir = tmp / "run"
    run_recipe(recipe, run_dir=run_dir, console=QUIET, after_run=render_report)
    return run_dir


def test_report_has_stage_tables_plots_and_scores(scored_run):
    html = (scored_run / "report.html").read_text()
    for label in ("q", "round-1/train", "round-2/eval"):
        assert f"<h2>{label}</h2>" in html
    assert "missing_field: 1, bad_json: 1" in html and "too_long: 2" in html  # rejected rows by reason
    assert "input_rows: 100" in html and "final_loss: 0.4" in html
    assert "model = round-1/train" in html  # inputs name the producing stage
    # scores: a comparison table over both evals and a chart
    assert "scores (95% intervals)" in html
    assert html.count("0.300 [0.200, 0.400] n=50") == 2 and html.count("0.500 [0.400, 0.600] n=50") == 2
    pngs = images(html)
    assert len(pngs) == 1 + 2 + 2  # scores chart; train curves of both rounds; eval curves of both rounds
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in pngs)


def test_failure_examples_are_escaped(scored_run):
    html = (scored_run / "report.html").read_text()
    assert "failure examples" in html
    assert "&lt;b&gt;2+2&lt;/b&gt;" in html and "5 &lt;script&gt;" in html
    assert "<script>" not in html and "<b>2+2" not in html


def test_series_keep_the_current_attempt_and_latest_value_per_step():
    view = StageView(label="round-1/sft", path=Path("."), status="done",
                     manifest={"id": "sft", "round": 1, "key": "abcdef0123456789ffff"})
    rows = [
        {"stage": "sft", "round": 1, "key": "abcdef0123456789", "step": 1, "loss": 3.0, "time": 1.0},
        {"stage": "sft", "round": 1, "key": "abcdef0123456789", "step": 2, "loss": 2.0, "note": "x"},
        {"stage": "sft", "round": 1, "key": "abcdef0123456789", "step": 2, "loss": 1.5},  # resumed attempt
        {"stage": "sft", "round": 1, "key": "0000000000000000", "step": 3, "loss": 9.0},  # an older config
        {"stage": "sft", "round": 2, "key": "abcdef0123456789", "step": 3, "loss": 9.0},  # another round
        {"stage": "sft", "round": 1, "key": "abcdef0123456789", "loss": 9.0},  # no step: not a series point
    ]
    assert stage_series(rows, view) == {"loss": [(1.0, 3.0), (2.0, 1.5)]}


def test_report_after_a_failure_shows_what_exists(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "bad", "stages": [
        {"id": "ok", "kind": "fake_write"}, {"id": "boom", "kind": "fake_write", "config": {"fail": True}},
        {"id": "never", "kind": "fake_write"}]}))
    run_dir = tmp_path / "run"
    with pytest.raises(StageFailedError):
        run_recipe(recipe, run_dir=run_dir, console=QUIET, after_run=render_report)
    (run_dir / "cut").mkdir()
    (run_dir / "cut" / "_KEY").write_text("k")  # a stage cut off before its manifest
    views = {v.label: v.status for v in read_stages(run_dir)}
    assert views == {"ok": "done", "boom": "failed", "cut": "running"}
    html = render_report(run_dir).read_text()
    assert '<span class="failed">failed</span>' in html and "RuntimeError: asked to fail" in html
    assert "never" not in html.split("recipe (resolved)")[0]
    assert json.loads((run_dir / "boom" / "manifest.json").read_text())["status"] == "failed"
