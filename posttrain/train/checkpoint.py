"""Atomic, resumable training checkpoints at optimizer-step boundaries.

Layout of one checkpoint, `<root>/step-00000040/`:
  model.safetensors    weights (all of them; only the trainable ones when training adapters)
  optimizer.pt         {"optimizer": ..., "scheduler": ...} (tensors and numbers; loaded weights_only)
  trainer_state.json   step, data position (epoch, step in epoch), skip counters
  rng/rank-<r>.json    Python, NumPy and torch RNG states of process r

A checkpoint is written into `<root>/.tmp-step-.../`, every file fsync'd, then renamed into place:
a directory named `step-*` is always complete. Older checkpoints beyond `keep_last` are deleted only
after the rename. Full (unsharded) state dicts come from torch.distributed.checkpoint's
`get_*_state_dict`, so the same checkpoint loads into 1 process, DDP or FSDP2.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from posttrain.train.distributed import DistContext, barrier

_STEP_DIR = re.compile(r"^step-(\d{8})$")
MODEL_FILE, OPTIMIZER_FILE, STATE_FILE, RNG_DIR = "model.safetensors", "optimizer.pt", "trainer_state.json", "rng"


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    if not Path(root).is_dir():
        return []
    found = [(int(m.group(1)), p) for p in Path(root).iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: Path) -> Path | None:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1] if checkpoints else None


# ---- RNG ---------------------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """Python, NumPy and torch (CPU + CUDA) RNG states as JSON-able lists."""
    import numpy as np

    py_version, py_state, py_gauss = random.getstate()
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_kind, np_keys.tolist(), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    import numpy as np

    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_kind, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ---- full state dicts through any wrapper --------------------------------------------------------


def _options(ctx: DistContext, **extra):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # cpu_offload gathers onto rank 0 only (other ranks get {}), which needs a process group.
    return StateDictOptions(full_state_dict=True, cpu_offload=ctx.is_distributed, **extra)


def gather_model_state(module: nn.Module, ctx: DistContext, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Full float state dict on rank 0 ({} elsewhere under FSDP2), keyed as module.state_dict()."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state = get_model_state_dict(module, options=_options(ctx))
    if trainable_only:
        trainable = {name for name, p in module.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trainable}
    # Clone: tied weights share storage, which safetensors refuses to write twice.
    return {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}


def load_model_state(module: nn.Module, state: dict[str, torch.Tensor], ctx: DistContext, strict: bool) -> None:
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(module, state, options=_options(ctx, strict=strict, broadcast_from_rank0=ctx.is_distributed))


def gather_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext) -> dict:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=_options(ctx))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict, ctx: DistContext) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_options(ctx, broadcast_from_rank0=ctx.is_distributed))


# ---- atomic write --------------------------------------------------------------------------------


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload))
    _fsync_path(path)


def save_checkpoint(
    root: Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    trainer_state: dict[str, Any],
    ctx: DistContext,
    keep_last: int,
) -> Path:
    """Write checkpoint `step` atomically (all ranks call; rank 0 writes the shared files) and prune old ones."""
    root = Path(root)
    final, tmp = root / checkpoint_name(step), root / f".tmp-{checkpoint_name(step)}"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / RNG_DIR).mkdir(parents=True)
    barrier(ctx)
    _write_json(tmp / RNG_DIR / f"rank-{ctx.rank}.json", capture_rng())
    if ctx.is_main:
        save_file(model_state, str(tmp / MODEL_FILE))
        _fsync_path(tmp / MODEL_FILE)
        with open(tmp / OPTIMIZER_FILE, "wb") as handle:
            torch.save(optimizer_state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        _write_json(tmp / STATE_FILE, trainer_state)
    barrier(ctx)
    if ctx.is_main:
        _fsync_path(tmp / RNG_DIR)
        _fsync_path(tmp)
        if final.exists():  # same step written before a cut: replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_path(root)
        prune_checkpoints(root, keep_last)
    barrier(ctx)
    return final


def prune_checkpoints(root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` complete checkpoints, and leftovers of cut-off writes."""
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in Path(root).glob(".tmp-step-*"):
        shutil.rmtree(partial, ignore_errors=True)


def read_checkpoint(path: Path, rank: int) -> tuple[dict[str, torch.Tensor], dict, dict[str, Any], dict | None]:
    """(model state, optimizer state, trainer state, this rank's RNG state or None) of a checkpoint."""
    path = Path(path)
    model_state = load_file(str(path / MODEL_FILE))
    optimizer_state = torch.load(path / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
    trainer_state = json.loads((path / STATE_FILE).read_text())
    rng_file = path / RNG_DIR / f"rank-{rank}.json"
    rng = json.loads(rng_file.read_text()) if rng_file.exists() else None
    return model_state, optimizer_state, trainer_state, rng
