"""Per-step metrics: loss, lr, grad norm, throughput and MFU, sent to a callback (and TensorBoard / W&B).

MFU (model FLOPs utilisation, Chowdhery et al. 2022, PaLM appendix B) = 6 * params * tokens/s / peak
FLOP/s: 6 FLOPs per parameter per token for forward + backward, attention ignored. With frozen
weights (LoRA) the true count is nearer 4N, so MFU reads high there.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import torch

# Dense bf16 peak FLOP/s per device, by a substring of torch.cuda.get_device_name().
KNOWN_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}

LogFn = Callable[[dict[str, Any]], None]


def lookup_peak_flops(device: torch.device) -> float | None:
    """Peak dense bf16 FLOP/s of a known GPU, else None (CPU: unknown)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in KNOWN_PEAK_FLOPS.items() if key in name), None)


class StepLogger:
    """Turns step results into metric rows every `log_every` steps; only the main process emits."""

    def __init__(
        self,
        log_fn: LogFn | None,
        log_every: int,
        num_params: int,
        peak_flops: float | None,
        enabled: bool,
        tensorboard_dir: str | None = None,
        wandb_project: str | None = None,
    ):
        self.log_fn, self.log_every, self.enabled = log_fn, log_every, enabled
        self.num_params, self.peak_flops = num_params, peak_flops
        self._window_start, self._window_tokens = time.perf_counter(), 0
        self._sinks = _optional_sinks(tensorboard_dir, wandb_project) if enabled else []

    def record(self, step: int, values: dict[str, Any], tokens: int) -> dict[str, Any] | None:
        """Add one finished step; returns (and emits) the row when this step is a logging step."""
        self._window_tokens += tokens
        if step % self.log_every:
            return None
        elapsed = max(time.perf_counter() - self._window_start, 1e-9)
        row = {"step": step, **values, "tokens_per_s": self._window_tokens / elapsed}
        if self.peak_flops:
            row["mfu"] = 6.0 * self.num_params * row["tokens_per_s"] / self.peak_flops
        self._window_start, self._window_tokens = time.perf_counter(), 0
        if self.enabled:
            if self.log_fn is not None:
                self.log_fn(row)
            for sink in self._sinks:
                sink(step, row)
        return row


def _optional_sinks(tensorboard_dir: str | None, wandb_project: str | None) -> list[Callable[[int, dict], None]]:
    """TensorBoard and W&B writers, each only when asked for and importable."""
    sinks = []
    if tensorboard_dir:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            SummaryWriter = None
        if SummaryWriter is not None:
            writer = SummaryWriter(tensorboard_dir)

            def to_tensorboard(step: int, row: dict) -> None:
                for key, value in row.items():
                    if isinstance(value, (int, float)) and key != "step":
                        writer.add_scalar(f"train/{key}", value, step)
                writer.flush()

            sinks.append(to_tensorboard)
    if wandb_project:
        try:
            import wandb
        except ImportError:
            wandb = None
        if wandb is not None:
            run = wandb.init(project=wandb_project) if wandb.run is None else wandb.run
            sinks.append(lambda step, row: run.log({f"train/{k}": v for k, v in row.items()}, step=step))
    return sinks
