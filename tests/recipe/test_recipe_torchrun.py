"""A recipe under torchrun: rank 0 runs it, the other ranks join its distributed stages and write nothing."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
sys.path.insert(0, str(PLUGINS))
import fake_stages  # noqa: E402  (registers the fake stage kinds)

from posttrain.recipe.ranks import Processes, RankZeroFailedError, wait_for_stage  # noqa: E402
from posttrain.recipe.rundir import DONE, MANIFEST, RunDirError  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")


def torchrun_recipe(tmp_path: Path, run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "ranks", "stages": [
        {"id": "a", "kind": "fake_write"},
        {"id": "b", "kind": "fake_distributed", "inputs": {"src": "a"}},
        {"id": "c", "kind": "fake_write", "inputs": {"src": "b"}},
    ]}, sort_keys=False))
    env = dict(os.environ, POSTTRAIN_PLUGINS="fake_stages", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(PLUGINS), os.environ.get("PYTHONPATH")])))
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "posttrain.cli", "run", str(recipe),
               "--run-dir", str(run_dir), *extra]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_run_a_recipe_once(tmp_path):
    run_dir = tmp_path / "run"
    proc = torchrun_recipe(tmp_path, run_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = fake_stages.calls(run_dir)
    # the data stages ran once (rank 0), the distributed one on both ranks, which met in one all-reduce
    assert sorted(calls) == ["a", "b rank=0", "b rank=1", "c"] and calls[0] == "a" and calls[-1] == "c"
    assert (run_dir / "c" / "out.txt").read_text() == "c[x](sum=3)"
    manifest = json.loads((run_dir / "b" / MANIFEST).read_text())
    assert manifest["status"] == "done" and manifest["counts"]["world_size"] == 2 and manifest["launch"]
    # only rank 0 writes: one metrics row and one quarantined row for b
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["rank"] for row in rows if row["stage"] == "b"] == [0]
    assert (run_dir / "b" / "quarantine.jsonl").read_text().count("fake_reason") == 1
    # a second launch finds every stage done on every rank
    again = torchrun_recipe(tmp_path, run_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert fake_stages.calls(run_dir) == calls
    # a third reruns b and what follows: the other rank does not take b's earlier _DONE (same key) for this launch's
    forced = torchrun_recipe(tmp_path, run_dir, "--from-stage", "b")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert sorted(fake_stages.calls(run_dir)[len(calls):]) == ["b rank=0", "b rank=1", "c"]


def write_manifest(stage_dir: Path, **fields) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / MANIFEST).write_text(json.dumps({"key": "k1", "launch": "L", **fields}))


def test_waiting_reads_only_this_launch(tmp_path):
    stage_dir = tmp_path / "s"
    write_manifest(stage_dir, status="running")
    wait_for_stage(stage_dir, "k1", "L", started_is_enough=True, poll=0.01)  # started is enough for a distributed stage
    write_manifest(stage_dir, status="done", launch="an earlier launch")
    (stage_dir / DONE).write_text("k1\n")

    def finish():
        time.sleep(0.2)
        write_manifest(stage_dir, status="done")

    threading.Thread(target=finish).start()
    started = time.monotonic()
    wait_for_stage(stage_dir, "k1", "L", started_is_enough=False, poll=0.01)
    assert time.monotonic() - started >= 0.2  # the earlier launch's done manifest was not taken for this one's
    write_manifest(stage_dir, status="failed", error="RuntimeError: boom")
    with pytest.raises(RankZeroFailedError, match="boom"):
        wait_for_stage(stage_dir, "k1", "L", started_is_enough=False, poll=0.01)


def test_processes_from_the_environment(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT", "MASTER_ADDR",
                 "MASTER_PORT", "POSTTRAIN_LAUNCH_ID"):
        monkeypatch.delenv(name, raising=False)
    assert Processes.from_env() == Processes()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunDirError, match="POSTTRAIN_LAUNCH_ID"):
        Processes.from_env()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("POSTTRAIN_LAUNCH_ID", "job-7")
    assert Processes.from_env() == Processes(rank=1, world_size=2, launch="job-7")
