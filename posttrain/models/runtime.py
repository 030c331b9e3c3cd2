"""Process-level runtime choices: CPU threads, seeds, default device and dtype."""
from __future__ import annotations

import contextlib
import os
import random
from typing import Iterator

import torch

THREADS_ENV = "POSTTRAIN_THREADS"


def available_cores() -> int:
    """Cores this process may actually run on (affinity / cgroup cpuset), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def set_cpu_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n`, else $POSTTRAIN_THREADS, else the available cores; returns it.

    Oversubscription (more threads than cores) made CPU runs many times slower here, and torch's
    default reads the machine's core count, not the cores this process is allowed.
    """
    if n is None:
        from_env = os.environ.get(THREADS_ENV, "").strip()
        n = int(from_env) if from_env else available_cores()
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy (if present) and torch (CPU and every CUDA device)."""
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def default_device() -> torch.device:
    """The first CUDA device when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on GPU (training and inference), float32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Dropout off inside the block; the caller's train/eval state comes back afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
