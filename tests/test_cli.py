"""The CLI: run, report, kinds, per-kind standalone commands and their help, exit codes."""
import json
import sys
from pathlib import Path

import pytest
import yaml

PLUGINS = Path(__file__).resolve().parent / "plugins"
sys.path.insert(0, str(PLUGINS))
import fake_stages  # noqa: E402  (registers the fake stage kinds)

from posttrain.cli import main  # noqa: E402


@pytest.fixture(autouse=True)
def plugins(monkeypatch, tmp_path):
    monkeypatch.setenv("POSTTRAIN_PLUGINS", "fake_stages")
    monkeypatch.chdir(tmp_path)


def test_kinds_lists_plugin_kinds_with_dashes(capsys):
    assert main(["kinds"]) == 0
    out = capsys.readouterr().out
    assert "fake-write" in out and "writes its text and its inputs' texts" in out


def test_run_writes_the_run_dir_and_report_and_from_stage(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "clirun", "stages": [
        {"id": "a", "kind": "fake_write"}, {"id": "b", "kind": "fake_write", "inputs": {"src": "a"}}]}))
    assert main(["run", str(recipe)]) == 0  # default run dir: runs/<name> under the working directory
    run_dir = tmp_path / "runs" / "clirun"
    assert (run_dir / "report.html").exists() and (run_dir / "recipe.yaml").exists()
    assert "stage b (fake_write): done" in capsys.readouterr().out
    assert main(["run", str(recipe), "--run-dir", str(run_dir), "--from-stage", "b"]) == 0
    out = capsys.readouterr().out
    assert "stage a (fake_write): cached, skipped" in out and "stage b (fake_write): done" in out
    assert fake_stages.calls(run_dir) == ["a", "b", "b"]
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0 and (run_dir / "report.html").exists()


def test_invalid_recipe_and_quarantine_failure_exit_codes(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "stages": [{"id": "a", "kind": "fake_write", "config": {"lr": "no"}}]}))
    assert main(["run", str(bad)]) == 2
    assert "stages[0].config.lr: Input should be a valid number" in capsys.readouterr().err
    q = tmp_path / "q.yaml"
    q.write_text(yaml.safe_dump({"name": "q", "stages": [{"id": "q", "kind": "fake_quarantine", "config": {"bad": 50}}]}))
    assert main(["run", str(q)]) == 1
    captured = capsys.readouterr()
    assert "50 of 100 input rows (50.0%) were quarantined" in captured.err
    assert "Traceback" not in captured.err  # an expected data problem, not a crash
    assert (tmp_path / "runs" / "q" / "report.html").exists()  # the report is written after a failure too


def test_standalone_stage_command(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("hello")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("text: from-file\nmode: b\n")
    out = tmp_path / "out"
    argv = ["fake-write", "--config", str(cfg), "--set", "text=hi", "--set", "lr=1e-4",
            "--input", f"src={src}", "--input", f"more={src}", "--out", str(out)]
    assert main(argv) == 0
    assert (out / "out.txt").read_text() == "fake_write[hi](hello,hello)"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["mode"] == "b" and manifest["config"]["lr"] == 1e-4
    assert (out / "_DONE").exists() and (out / "report.html").exists()
    assert main(argv) == 0 and fake_stages.calls(out) == ["fake_write"]  # cached on rerun
    assert main(["fake-write", "--set", "mode=c", "--out", str(out)]) == 2
    assert "config.mode: Input should be 'a' or 'b'" in capsys.readouterr().err
    assert main(["fake-write", "--set", "text=new", "--out", str(out)]) == 0  # new key: the directory is redone
    assert (out / "out.txt").read_text() == "fake_write[new]()" and (out / "recipe.yaml").exists()


def test_standalone_refuses_a_foreign_directory(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["fake-write", "--out", str(out)]) == 2
    assert "not written by posttrain; refusing to overwrite it" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "keep me"


def test_help_explains_each_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fake-write", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "Test stage: writes its text" in out
    assert "mode (Literal['a', 'b'], default 'a'): a literal (validation tests)" in out
    assert "src (optional)" in out and "--input NAME=PATH" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "--from-stage" in capsys.readouterr().out


def test_console_helpers_are_plain_off_a_terminal(capsys):
    import io

    from posttrain.data.progress import progress
    from posttrain.recipe.console import RunConsole

    assert list(progress(iter(range(5)), total=5, desc="x")) == [0, 1, 2, 3, 4]  # stderr is not a TTY here
    assert capsys.readouterr().err == ""
    assert list(progress(range(3), desc="bar", enabled=True)) == [0, 1, 2]
    stream = io.StringIO()
    console = RunConsole(stream=stream)  # StringIO is no TTY: plain lines, no markup
    console.stage_done("round-1/sft", "sft", 2.25)
    console.stage_failed("x", "sft", RuntimeError("[bad]"))
    assert stream.getvalue().splitlines() == ["stage round-1/sft (sft): done in 2.2s", "stage x (sft): FAILED: [bad]"]
