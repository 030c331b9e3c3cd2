"""AdamW with decay on linear weights only, and the warmup + decay learning-rate schedules."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from posttrain.train.config import TrainConfig


def decay_and_no_decay(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Trainable parameters split into (decayed, undecayed).

    Decayed: weights of nn.Linear (incl. LoRA A/B and the LM head when it is untied).
    Undecayed: norms, biases, embeddings (tied LM heads share the embedding, so they follow it).
    """
    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linear_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decayed, undecayed, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        if id(param) in linear_ids and id(param) not in embedding_ids:
            decayed.append(param)
        else:
            undecayed.append(param)
    return decayed, undecayed


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019) over two groups: linear weights decayed, the rest not."""
    decayed, undecayed = decay_and_no_decay(model)
    if not decayed and not undecayed:
        raise ValueError("the model has no trainable parameters")
    groups = [
        {"params": decayed, "weight_decay": config.weight_decay},
        {"params": undecayed, "weight_decay": 0.0},
    ]
    # One fused kernel for the whole update on a single GPU (plain CUDA tensors; sharded DTensors keep foreach).
    fused = all(p.is_cuda and type(p.data) is torch.Tensor for group in groups for p in group["params"]) or None
    return torch.optim.AdamW(
        [group for group in groups if group["params"]], lr=config.lr, betas=config.betas, eps=config.eps, fused=fused
    )


def lr_multiplier(
    schedule: str, warmup: int, total: int, min_ratio: float = 0.0
) -> Callable[[int], float]:
    """step -> lr / peak_lr: linear warmup over `warmup` steps, then cosine / linear decay to min_ratio, or constant.

    The value at `step` is the multiplier used for the update of step `step` (0-based).
    """

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        decay_steps = max(1, total - warmup)
        progress = min(1.0, (step - warmup) / decay_steps)
        if schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        elif schedule == "linear":
            shape = 1.0 - progress
        else:
            raise ValueError(f"unknown schedule {schedule!r}; choose cosine, linear or constant")
        return min_ratio + (1.0 - min_ratio) * shape

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's schedule over `total_steps` optimizer steps, as a LambdaLR (its state is just a counter)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(config.schedule, config.warmup_for(total_steps), total_steps, config.min_lr_ratio)
    )
