"""A runner killed with SIGKILL (between stages, inside a stage) and the lock held by a live runner."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
sys.path.insert(0, str(PLUGINS))
import fake_stages  # noqa: E402  (registers the fake stage kinds)

from posttrain.recipe import RunLockedError, run_recipe  # noqa: E402
from posttrain.recipe.console import RunConsole  # noqa: E402

QUIET = RunConsole(stream=open(os.devnull, "w"), rich=False)
STEPS = 40


def recipe(tmp_path: Path) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "kill", "stages": [
        {"id": "a", "kind": "fake_write"},
        {"id": "b", "kind": "fake_slow", "inputs": {"src": "a"}, "config": {"steps": STEPS, "sleep": 0.05}},
        {"id": "c", "kind": "fake_write", "inputs": {"src": "b"}},
    ]}, sort_keys=False))
    return path


def start_runner(tmp_path: Path, run_dir: Path) -> subprocess.Popen:
    """The real CLI in a subprocess, with the fake stages as a plugin."""
    env = dict(os.environ, POSTTRAIN_PLUGINS="fake_stages",
               PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    log = open(tmp_path / "runner.log", "w")
    return subprocess.Popen([sys.executable, "-m", "posttrain.cli", "run", str(recipe(tmp_path)), "--run-dir", str(run_dir)],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(condition, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"runner exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out waiting for the runner")
        time.sleep(0.01)


def progress(run_dir: Path) -> int:
    text = (run_dir / "b" / "progress.txt").read_text() if (run_dir / "b" / "progress.txt").exists() else ""
    return int(text) if text.strip() else 0


def kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_kill_inside_a_stage_resumes_it_and_a_live_runner_holds_the_lock(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_runner(tmp_path, run_dir)
    wait_for(lambda: progress(run_dir) >= 5, proc)
    with pytest.raises(RunLockedError, match=f"in use by another posttrain process \\(pid {proc.pid}\\)"):
        run_recipe(recipe(tmp_path), run_dir=run_dir, console=QUIET)
    kill(proc)
    cut_at = progress(run_dir)
    assert 5 <= cut_at < STEPS and not (run_dir / "b" / "_DONE").exists()
    # The OS dropped the dead runner's lock: the next run starts at once and finishes.
    summary = run_recipe(recipe(tmp_path), run_dir=run_dir, console=QUIET)
    assert summary.skipped == ["a"] and summary.ran == ["b", "c"]
    calls = fake_stages.calls(run_dir)
    assert calls[0] == "a" and calls[1] == "b start=0"
    assert calls[2] == f"b start={cut_at}"  # found its partial state
    assert (run_dir / "c" / "out.txt").read_text() == f"c[x](slow({STEPS})a[x]())"


def test_kill_between_stages_reruns_only_what_is_not_done(tmp_path):
    run_dir = tmp_path / "run"
    proc = start_runner(tmp_path, run_dir)
    wait_for(lambda: (run_dir / "a" / "_DONE").exists(), proc)
    kill(proc)
    assert progress(run_dir) < STEPS
    summary = run_recipe(recipe(tmp_path), run_dir=run_dir, console=QUIET)
    assert summary.skipped == ["a"] and summary.ran == ["b", "c"]
    assert fake_stages.calls(run_dir).count("a") == 1
    assert (run_dir / "c" / "out.txt").read_text() == f"c[x](slow({STEPS})a[x]())"
