"""Per-tensor merge mechanics that keep memory to about one extra tensor, whatever the method.

A merge method is elementwise once a few per-tensor numbers are known (dot products for SLERP and
Model Stock, a magnitude threshold for TIES). `elementwise` applies a block function to flat
float32 blocks of the inputs and writes into one float32 output; the reductions below walk the
same blocks. Block temporaries are a few times BLOCK_ELEMENTS, so a merge holds its inputs, one
output and small change, and inputs stored in bf16 are upcast one block at a time.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Sequence

import torch

BLOCK_ELEMENTS = 1 << 16  # 256 KiB of float32 per operand: temporaries stay in cache and far below one tensor

BlockFn = Callable[[list[torch.Tensor], "torch.Tensor | None"], torch.Tensor]


def _flat(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(-1)  # a view for the contiguous tensors read from safetensors


def elementwise(fn: BlockFn, models: Sequence[torch.Tensor], base: torch.Tensor | None = None,
                block: int = BLOCK_ELEMENTS, out: torch.Tensor | None = None) -> torch.Tensor:
    """fn(model blocks, base block) over flat float32 blocks, written into a float32 tensor shaped like models[0].

    `out` may be one of the inputs' float32 buffers when fn reads each element before writing it.
    """
    shape = models[0].shape
    if out is None:
        out = torch.empty(shape, dtype=torch.float32)
    flat_out, flat_models = _flat(out), [_flat(m) for m in models]
    flat_base = None if base is None else _flat(base)
    for start in range(0, flat_out.numel(), block):
        end = start + block
        blocks = [m[start:end].float() for m in flat_models]
        base_block = None if flat_base is None else flat_base[start:end].float()
        flat_out[start:end] = fn(blocks, base_block)
    return out


def task_vector_blocks(models: Sequence[torch.Tensor], base: torch.Tensor | None, block: int = BLOCK_ELEMENTS):
    """Yield lists of flat float32 blocks of models[i] - base (or of the models themselves when base is None)."""
    flat_models = [_flat(m) for m in models]
    flat_base = None if base is None else _flat(base)
    for start in range(0, flat_models[0].numel(), block):
        end = start + block
        blocks = [m[start:end].float() for m in flat_models]
        if flat_base is not None:
            base_block = flat_base[start:end].float()
            blocks = [b - base_block for b in blocks]
        yield blocks


def gram(models: Sequence[torch.Tensor], base: torch.Tensor | None = None,
         block: int = BLOCK_ELEMENTS) -> list[list[float]]:
    """G[i][j] = <v_i, v_j> for v_i = models[i] - base (or models[i]), summed over blocks in float64.

    Every entry goes through the same torch.dot on the same blocks, so identical inputs give
    G[i][j] == G[i][i] exactly and a cosine of exactly 1.
    """
    k = len(models)
    sums = [[0.0] * k for _ in range(k)]
    for blocks in task_vector_blocks(models, base, block):
        for i in range(k):
            for j in range(i, k):
                sums[i][j] += torch.dot(blocks[i], blocks[j]).item()
    for i in range(k):
        for j in range(i):
            sums[i][j] = sums[j][i]
    return sums


def cosine_from_gram(g: list[list[float]], i: int, j: int) -> float | None:
    """cos(v_i, v_j) clamped to [-1, 1], or None when either vector is zero."""
    squared = g[i][i] * g[j][j]
    if squared <= 0.0:
        return None
    return max(-1.0, min(1.0, g[i][j] / math.sqrt(squared)))  # sqrt(s * s) == s exactly: cos(v, v) == 1


def magnitude_threshold(model: torch.Tensor, base: torch.Tensor, density: float,
                        block: int = BLOCK_ELEMENTS) -> float:
    """The k-th largest |model - base|, k = max(1, int(density * numel)): keeping |delta| >= it keeps the top k.

    numpy's in-place introselect on one float32 copy: torch.kthvalue and topk allocate values and
    int64 indices, three to four copies of the tensor. Ties at the threshold are all kept.
    """
    numel = model.numel()
    k = max(1, int(density * numel))  # a positive density keeps at least one entry
    if k >= numel:
        return 0.0
    magnitudes = torch.empty(numel, dtype=torch.float32)
    start = 0
    for (delta,) in task_vector_blocks([model], base, block):
        magnitudes[start : start + delta.numel()] = delta.abs()
        start += delta.numel()
    array = magnitudes.numpy()
    array.partition(numel - k)
    return float(array[numel - k])


def seeded_generator(seed: int, *parts: object) -> torch.Generator:
    """A CPU generator seeded from (seed, parts), stable across processes and Python versions."""
    digest = hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
