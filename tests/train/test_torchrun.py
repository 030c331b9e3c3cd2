"""The same loop under torchrun with 2 gloo processes: DDP and FSDP2 match 1 process; FSDP2 resumes and saves."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_fixtures import toy_examples
from _train_worker import train_toy
from posttrain.models.loading import load_causal_lm
from posttrain.train import checkpoint as ckpt

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("_train_worker.py")
TORCHRUN = Path(sys.executable).with_name("torchrun")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """Global batch = 2 rows per step: 1 process x accumulation 2."""
    out = tmp_path_factory.mktemp("one")
    summary = train_toy(out, accumulation=2)
    model, _ = load_causal_lm(out / "model")
    return summary, model


def _torchrun(out: Path, *args: str, **config) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(WORKER), str(out), *args,
        "--config", json.dumps({"accumulation": 1, **config}),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=400, env=env)


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def _logits(model, ids):
    with torch.no_grad():
        return model.eval()(input_ids=ids, use_cache=False).logits


def test_ddp_two_processes_match_one(tmp_path, one_process):
    run = _torchrun(tmp_path, parallel="ddp")
    assert run.returncode == 0, run.stderr[-3000:]
    reference, _ = one_process
    assert _result(tmp_path)["losses"] == pytest.approx(reference["losses"], rel=1e-5)


def test_fsdp2_matches_one_process_resumes_and_saves_hf(tmp_path, one_process):
    reference, reference_model = one_process
    uncut, cut = tmp_path / "uncut", tmp_path / "cut"
    run = _torchrun(uncut, parallel="fsdp2")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _result(uncut)["losses"] == pytest.approx(reference["losses"], rel=1e-5)

    # The HF save gathered from the shards loads in this single process and computes what 1 process trained.
    loaded, _ = load_causal_lm(uncut / "model")
    assert set(loaded.state_dict()) == set(reference_model.state_dict())
    ids = torch.tensor([toy_examples(1, seed=9)[0]["input_ids"]])
    torch.testing.assert_close(_logits(loaded, ids), _logits(reference_model, ids), rtol=0, atol=2e-3)

    # Rank 0 SIGKILLed after step 3: torchrun tears the job down; a new torchrun resumes from step 2.
    killed = _torchrun(cut, "--kill-step", "3", parallel="fsdp2")
    assert killed.returncode != 0 and not (cut / "result.json").exists()
    assert ckpt.latest_checkpoint(cut / "checkpoints").name == "step-00000002"
    assert sorted(p.name for p in (ckpt.latest_checkpoint(cut / "checkpoints") / "rng").iterdir()) == [
        "rank-0.json", "rank-1.json"
    ]
    resumed = _torchrun(cut, parallel="fsdp2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _result(cut)["losses"] == _result(uncut)["losses"][2:]
    assert _result(cut)["hash"] == _result(uncut)["hash"]
