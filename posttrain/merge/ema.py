"""The exponential moving average anchor of WARP's first step, for the online RL stage to call each step.

WARP (Ramé et al. 2024) regularises RL towards theta_ema, an EMA of the policy itself, instead of
the frozen SFT model: theta_ema <- decay theta_ema + (1 - decay) theta (WARP's mu = 1 - decay, 0.01).
"""
from __future__ import annotations

from typing import Iterable

import torch


@torch.no_grad()
def ema_update(anchor: torch.Tensor, current: torch.Tensor, decay: float) -> torch.Tensor:
    """anchor <- decay anchor + (1 - decay) current, in place; returns anchor. decay 1 keeps it, 0 copies current."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay {decay} is outside [0, 1]")
    return anchor.lerp_(current.to(anchor.dtype), 1.0 - decay)


@torch.no_grad()
def ema_update_all(anchors: Iterable[torch.Tensor], currents: Iterable[torch.Tensor], decay: float) -> None:
    """ema_update over matching parameter lists (e.g. anchor_model.parameters(), policy.parameters())."""
    anchors, currents = list(anchors), list(currents)
    if len(anchors) != len(currents):
        raise ValueError(f"{len(anchors)} anchor tensors but {len(currents)} current ones")
    for anchor, current in zip(anchors, currents):
        ema_update(anchor, current, decay)
