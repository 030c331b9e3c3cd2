"""Peak resident memory of a streaming merge stays within (inputs + 2) x the largest tensor.

Three 88 MB float32 models (two variants and their base) are merged in a fresh process; the peak
is read from VmHWM after resetting it (clear_refs) once torch and posttrain are imported.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # ~30-60 s on 2 shared cores: writing and merging 200+ MB

CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from posttrain.merge.methods import MergeParams
from posttrain.merge.streaming import merge_checkpoints

def status(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))

models, base, out, method = sys.argv[1:3], sys.argv[3], sys.argv[4], sys.argv[5]
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the after-import resident size
baseline = status("VmRSS:")
merge_checkpoints(models, out, method, MergeParams(density=0.5), base=None if method == "linear" else base)
print(json.dumps({"baseline": baseline, "peak": status("VmHWM:")}))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    from posttrain.models.loading import random_init_causal_lm, save_state_dict_as_hf

    from _merge_fixtures import tokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("memory")
    # 22M parameters (88 MB); the embedding and the head are the largest tensors (16 MiB each)
    model = random_init_causal_lm("llama", vocab_size=8192, hidden_size=512, num_layers=4, num_heads=8,
                                  num_kv_heads=8, intermediate_size=1536, max_position_embeddings=64, seed=0)
    state = {name: t.detach() for name, t in model.state_dict().items()}
    paths = {"base": save_state_dict_as_hf(state, model.config, tokenizer(), root / "base")}
    for seed in (1, 2):
        generator = torch.Generator().manual_seed(seed)
        noisy = {name: t + 0.01 * torch.randn(t.shape, generator=generator) for name, t in state.items()}
        paths[f"ft{seed}"] = save_state_dict_as_hf(noisy, model.config, tokenizer(), root / f"ft{seed}")
        del noisy
    largest = max(t.numel() * t.element_size() for t in state.values())
    total = sum(t.numel() * t.element_size() for t in state.values())
    return {**paths, "largest": largest, "total": total, "root": root}


@pytest.mark.parametrize("method,inputs", [("linear", 2), ("ties", 3), ("model_stock", 3)])
def test_peak_memory_is_bounded_by_inputs_plus_two_largest_tensors(models, method, inputs):
    out = models["root"] / f"out-{method}"
    args = [str(models["ft1"]), str(models["ft2"]), str(models["base"]), str(out), method]
    result = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True, timeout=600,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    above = measured["peak"] - measured["baseline"]
    bound = (inputs + 2) * models["largest"]
    print(f"{method}: peak above baseline {above / 2**20:.1f} MiB, bound {bound / 2**20:.1f} MiB, "
          f"model {models['total'] / 2**20:.0f} MiB")
    assert above <= bound
    assert above < models["total"]  # never a multiple of the model
