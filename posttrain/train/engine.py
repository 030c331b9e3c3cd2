"""The one training engine: an algorithm brings a loss function and a plan of steps, nothing else.

    loss_fn(model, micro_batch) -> LossOutput(loss_sum, normaliser, metrics)

`loss_sum` is the loss SUMMED over the micro-batch's units (tokens for SFT, pairs for DPO and reward
models, sequences for RL) and `normaliser` counts those units. Gradients of the sums accumulate over
all micro-batches of a step on every process, then are divided once by the step's global normaliser
(all-reduced). So the update is the gradient of (sum of losses) / (number of units) over the whole
step, however the units are split into micro-batches and processes: batch 8 x accumulation 1 and
batch 1 x accumulation 8 give the same update up to float rounding (the bug of torchtune #2307 and
of per-micro-batch means cannot happen).

A step that produces a non-finite loss or gradient norm on any process is skipped on all of them;
more than `max_consecutive_skips` in a row stop training with `TrainingDiverged`, after writing a
loadable checkpoint of the last good weights.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from posttrain.models.runtime import seed_everything
from posttrain.train import checkpoint as ckpt
from posttrain.train.adapters import is_lora, prepare_model
from posttrain.train.config import TrainConfig
from posttrain.train.distributed import (
    DistContext,
    all_reduce_sum,
    choose_parallel,
    grad_mean_factor,
    gradient_sync,
    init_distributed,
    wrap_for_training,
)
from posttrain.train.optim import build_optimizer, build_scheduler
from posttrain.train.step_log import LogFn, StepLogger, lookup_peak_flops


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite steps; a checkpoint of the last good weights was written."""


@dataclasses.dataclass
class LossOutput:
    """What a loss function returns for one micro-batch."""

    loss_sum: torch.Tensor  # scalar, summed (not averaged) over the micro-batch's units
    normaliser: torch.Tensor | float  # number of units in this micro-batch (tokens, pairs, sequences)
    # Sums over the units, reported divided by the step's global normaliser; keys starting with
    # "num_" are counts, reported as the step's global sum.
    metrics: dict[str, torch.Tensor | float] = dataclasses.field(default_factory=dict)


LossFn = Callable[[nn.Module, Any], LossOutput]


@dataclasses.dataclass
class StepResult:
    step: int  # optimizer steps done, this one included
    loss: float  # global loss_sum / global normaliser
    normaliser: float
    grad_norm: float  # before clipping
    lr: float  # the learning rate this step used
    skipped: bool  # non-finite loss or gradient: weights unchanged
    tokens: int  # input tokens processed, all processes
    metrics: dict[str, float]


class StepPlan(Protocol):
    """The data of a run: for each epoch, this process's micro-batches of every optimizer step.

    steps(epoch) must be a pure function of (seed, epoch) so a resumed run replays it exactly.
    """

    epochs: int

    def steps(self, epoch: int) -> Sequence[Sequence[Any]]: ...


class _LossModule(nn.Module):
    """model + loss_fn as one module: DDP / FSDP2 wrap this, so their hooks see the whole loss computation."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, autocast_dtype: torch.dtype | None, device_type: str):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn
        self.autocast_dtype, self.device_type = autocast_dtype, device_type

    def forward(self, micro_batch: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        if self.autocast_dtype is None:
            out = self.loss_fn(self.model, micro_batch)
        else:
            with torch.autocast(self.device_type, dtype=self.autocast_dtype):
                out = self.loss_fn(self.model, micro_batch)
        return out.loss_sum.float(), torch.as_tensor(out.normaliser, dtype=torch.float64), out.metrics


def move_to(batch: Any, device: torch.device) -> Any:
    """A micro-batch on `device`: objects with .to(), dicts, lists and tuples of them."""
    if hasattr(batch, "to"):
        return batch.to(device)
    if isinstance(batch, dict):
        return {key: move_to(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(value, device) for value in batch)
    return batch


def count_tokens(batch: Any) -> int:
    """Input tokens of a micro-batch (padding included: it costs compute), summed over nested parts."""
    ids = batch.get("input_ids") if isinstance(batch, dict) else getattr(batch, "input_ids", None)
    if isinstance(ids, torch.Tensor):
        return ids.numel()
    if isinstance(batch, dict):
        return sum(count_tokens(value) for value in batch.values())
    if isinstance(batch, (list, tuple)):
        return sum(count_tokens(value) for value in batch)
    return 0


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The compute dtype training uses on `device` (None = float32); reference passes must score in it too."""
    if config.dtype == "bfloat16" or (config.dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def plan_total_steps(plan: StepPlan, max_steps: int | None) -> int:
    """Optimizer steps the run will take: the plan's steps over all epochs, capped by max_steps."""
    total = sum(len(plan.steps(epoch)) for epoch in range(plan.epochs))
    return min(total, max_steps) if max_steps else total


class Trainer:
    """Optimizer, schedule, accumulation, guards, checkpoints and logging around one loss function."""

    def __init__(
        self,
        model: nn.Module,
        config: TrainConfig,
        loss_fn: LossFn,
        *,
        total_steps: int,
        checkpoint_dir: Path | None = None,
        log_fn: LogFn | None = None,
        ctx: DistContext | None = None,
    ):
        self.config, self.total_steps = config, total_steps
        self.ctx = ctx or init_distributed()
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.model = prepare_model(model, config).to(self.ctx.device)  # unwrapped (maybe peft) model
        self.parallel = choose_parallel(config.parallel, self.ctx)
        loss_module = _LossModule(self.model, loss_fn, autocast_dtype(config, self.ctx.device), self.ctx.device.type)
        self.module = wrap_for_training(loss_module, self.model, self.parallel, self.ctx)
        self.optimizer = build_optimizer(self.module, config)
        self.scheduler = build_scheduler(self.optimizer, config, total_steps)
        self.global_step = self.consecutive_skips = self.skipped_steps = 0
        self.last_checkpoint_step = -1
        self.logger = StepLogger(
            log_fn,
            config.log_every,
            num_params=sum(p.numel() for p in self.model.parameters()),
            peak_flops=config.peak_flops or lookup_peak_flops(self.ctx.device),
            enabled=self.ctx.is_main,
            tensorboard_dir=config.tensorboard_dir,
            wandb_project=config.wandb_project,
        )
        # Noise (dropout, NEFTune) is a function of (seed, rank); a resume overwrites this with the saved RNG.
        seed_everything(config.seed + self.ctx.rank)

    # ---- one optimizer step ---------------------------------------------------------------------

    def train_step(self, micro_batches: Sequence[Any]) -> StepResult:
        """Forward + backward every micro-batch, normalise by the global unit count, clip, guard, update."""
        if not micro_batches:
            raise ValueError("an optimizer step needs at least one micro-batch on every process")
        lr = self.scheduler.get_last_lr()[0]
        local, keys = self._forward_backward(micro_batches)
        total = all_reduce_sum(local, self.ctx).tolist()  # one collective (and one sync) per step
        loss_sum, global_normaliser, nonfinite_count, tokens, *metric_sums = total
        grad_norm = self._normalise_and_clip(global_normaliser)
        skipped = nonfinite_count > 0 or not math.isfinite(grad_norm) or global_normaliser <= 0
        self._apply_update(skipped, nonfinite=global_normaliser > 0)
        denominator = max(global_normaliser, 1e-12)
        return StepResult(
            step=self.global_step,
            loss=loss_sum / denominator,
            normaliser=global_normaliser,
            grad_norm=grad_norm,
            lr=lr,
            skipped=skipped,
            tokens=int(tokens),
            metrics={
                key: value if key.startswith("num_") else value / denominator for key, value in zip(keys, metric_sums)
            },
        )

    def _forward_backward(self, micro_batches: Sequence[Any]) -> tuple[torch.Tensor, list[str]]:
        """Backward of each micro-batch's loss SUM; returns this process's float64 totals
        [loss_sum, normaliser, non-finite count, tokens, *metric sums] (kept on device: no sync per micro-batch)."""
        self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        device = self.ctx.device
        totals = torch.zeros(4, dtype=torch.float64, device=device)
        metric_sums: dict[str, torch.Tensor] = {}
        for index, micro_batch in enumerate(micro_batches):
            with gradient_sync(self.module, self.parallel, sync=index == len(micro_batches) - 1):
                loss, normaliser, metrics = self.module(move_to(micro_batch, device))
                loss.backward()
            loss = loss.detach().double()
            totals += torch.stack([
                loss, normaliser.to(device).reshape(()), (~torch.isfinite(loss)).double(),
                torch.tensor(float(count_tokens(micro_batch)), dtype=torch.float64, device=device),
            ])
            for key, value in metrics.items():
                value = torch.as_tensor(value, dtype=torch.float64, device=device)
                metric_sums[key] = metric_sums.get(key, 0.0) + value.detach()
        keys = sorted(metric_sums)
        metric_values = [metric_sums[k].reshape(1) for k in keys]
        return torch.cat([totals, *metric_values]), keys

    def _normalise_and_clip(self, global_normaliser: float) -> float:
        """Turn summed gradients into the gradient of the step's mean loss; clip; return the pre-clip norm."""
        params = [p for p in self.module.parameters() if p.grad is not None]
        if not params or global_normaliser <= 0:
            return 0.0
        scale = grad_mean_factor(self.parallel, self.ctx) / global_normaliser
        for param in params:
            param.grad.mul_(scale)
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm is not None else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    def _apply_update(self, skipped: bool, nonfinite: bool) -> None:
        """Step the optimizer unless skipped; the schedule and step counter always advance with the data."""
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
            if nonfinite:
                self.consecutive_skips += 1
                self.skipped_steps += 1
        else:
            self.optimizer.step()
            self.consecutive_skips = 0
        self.scheduler.step()
        self.global_step += 1

    # ---- after a step: log, checkpoint, guard ---------------------------------------------------

    def after_step(self, result: StepResult, position: dict[str, Any]) -> None:
        """Log; checkpoint every `checkpoint_every` steps; abort after too many non-finite steps in a row.

        `position` says where the data resumes after this step (e.g. {"epoch": 1, "step_in_epoch": 0}).
        """
        row = {
            "loss": result.loss,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "skipped_steps": self.skipped_steps,
            **result.metrics,
        }
        self.logger.record(result.step, row, result.tokens)
        if self.consecutive_skips > self.config.max_consecutive_skips:
            self.save_checkpoint(position)
            raise TrainingDiverged(
                f"{self.consecutive_skips} consecutive steps had a non-finite loss or gradient norm "
                f"(limit {self.config.max_consecutive_skips}) at step {self.global_step}; last good weights "
                f"saved in {self.checkpoint_dir or '(no checkpoint_dir)'}"
            )
        every = self.config.checkpoint_every
        if every and self.global_step % every == 0:
            self.save_checkpoint(position)

    def done(self) -> bool:
        return self.global_step >= self.total_steps

    # ---- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, position: dict[str, Any]) -> Path | None:
        """Atomically write weights, optimizer, schedule, RNG and data position (no-op without checkpoint_dir)."""
        if self.checkpoint_dir is None or self.last_checkpoint_step == self.global_step:
            return None
        model_state = ckpt.gather_model_state(self.module, self.ctx, trainable_only=is_lora(self.model))
        optimizer_state = {
            "optimizer": ckpt.gather_optimizer_state(self.module, self.optimizer, self.ctx),
            "scheduler": self.scheduler.state_dict(),
        }
        trainer_state = {
            "global_step": self.global_step,
            "consecutive_skips": self.consecutive_skips,
            "skipped_steps": self.skipped_steps,
            "total_steps": self.total_steps,
            "world_size": self.ctx.world_size,
            "data_position": position,
        }
        path = ckpt.save_checkpoint(
            self.checkpoint_dir, self.global_step, model_state, optimizer_state, trainer_state, self.ctx, self.config.keep_last
        )
        self.last_checkpoint_step = self.global_step
        return path

    def resume(self) -> dict[str, Any] | None:
        """Load the latest complete checkpoint in checkpoint_dir, if any; returns its data position."""
        if self.checkpoint_dir is None:
            return None
        latest = ckpt.latest_checkpoint(self.checkpoint_dir)
        if latest is None:
            return None
        model_state, optimizer_state, state, rng = ckpt.read_checkpoint(latest, self.ctx.rank)
        ckpt.load_model_state(self.module, model_state, self.ctx, strict=not is_lora(self.model))
        ckpt.load_optimizer_state(self.module, self.optimizer, optimizer_state["optimizer"], self.ctx)
        self.scheduler.load_state_dict(optimizer_state["scheduler"])
        self.global_step = self.last_checkpoint_step = state["global_step"]
        self.consecutive_skips, self.skipped_steps = state["consecutive_skips"], state["skipped_steps"]
        if rng is not None:
            ckpt.restore_rng(rng)
        return state["data_position"]

    def full_model_state(self) -> dict[str, torch.Tensor]:
        """Full weights keyed like the unwrapped model's state_dict (on rank 0; {} elsewhere under FSDP2)."""
        state = ckpt.gather_model_state(self.module, self.ctx, trainable_only=False)
        prefix = "model."  # the loss module holds the model as `.model`
        return {key[len(prefix) :]: value for key, value in state.items()}

    # ---- the loop ----------------------------------------------------------------------------------

    def fit(self, plan: StepPlan) -> dict[str, Any]:
        """Run the plan from the latest checkpoint (or the start) to the end; checkpoint at the end."""
        position = self.resume() or {"epoch": 0, "step_in_epoch": 0}
        started, losses = time.perf_counter(), []
        for epoch in range(position["epoch"], plan.epochs):
            steps = plan.steps(epoch)
            first = position["step_in_epoch"] if epoch == position["epoch"] else 0
            for index in range(first, len(steps)):
                if self.done():
                    break
                result = self.train_step(steps[index])
                losses.append(result.loss)
                ended_epoch = index + 1 == len(steps)
                position = {"epoch": epoch + 1, "step_in_epoch": 0} if ended_epoch else {
                    "epoch": epoch, "step_in_epoch": index + 1
                }
                self.after_step(result, position)
            if self.done():
                break
        self.save_checkpoint(position)
        return {
            "steps": self.global_step,
            "skipped_steps": self.skipped_steps,
            "final_loss": losses[-1] if losses else None,
            "losses": losses,
            "seconds": time.perf_counter() - started,
        }
