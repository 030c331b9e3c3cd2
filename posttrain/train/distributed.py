"""One process or many: process-group setup, DDP / FSDP2 wrapping, reductions and data sharding.

The same training loop runs under `python` and under `torchrun`; everything that differs lives here.
FSDP2 is `torch.distributed.fsdp.fully_shard` (per-parameter DTensor sharding): each decoder layer is
its own shard group, and the root group (embeddings, final norm, LM head) wraps the engine's loss
module, so the chunked LM head applied after the decoder still sees unsharded weights.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process sits: rank, world size and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device | None = None) -> DistContext:
    """Join the torchrun process group when launched by torchrun (WORLD_SIZE > 1), else a single process.

    Backend: nccl on CUDA, gloo on CPU. Safe to call twice.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if world_size <= 1:
        return DistContext(device=device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a tensor over processes (one collective for all of a step's scalars); returned on the CPU."""
    if ctx.is_distributed:
        reduced = values.to(ctx.device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        return reduced.cpu()
    return values.cpu()


def shard_for_rank(items: Sequence[T], ctx: DistContext) -> list[T]:
    """This rank's share of one step's micro-batches: items[rank::world_size].

    The caller makes len(items) a multiple of world_size, so every rank runs the same number of
    forward/backward passes (DDP and FSDP2 collectives must match one for one).
    """
    if len(items) % ctx.world_size:
        raise ValueError(f"{len(items)} micro-batches do not split evenly over {ctx.world_size} processes")
    return list(items[ctx.rank :: ctx.world_size])


def rank_steps(rows: Sequence[T], accumulation: int, ctx: DistContext, empty_row: T) -> list[list[T]]:
    """An epoch's rows grouped into optimizer steps of accumulation x world rows, this rank's share of each.

    A short last step is padded with `empty_row` (no loss tokens) up to a multiple of the world size.
    """
    per_step = accumulation * ctx.world_size
    steps = []
    for start in range(0, len(rows), per_step):
        step_rows = list(rows[start : start + per_step])
        step_rows += [empty_row] * (-len(step_rows) % ctx.world_size)
        steps.append(shard_for_rank(step_rows, ctx))
    return steps


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated transformer blocks (each becomes one FSDP2 shard group)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise ValueError(f"found no *DecoderLayer modules in {type(model).__name__} to shard")
    return layers


def choose_parallel(requested: str, ctx: DistContext) -> str:
    """'none' for one process; 'ddp' for several unless fsdp2 is asked for."""
    if not ctx.is_distributed:
        return "none"
    return "ddp" if requested in ("auto", "none") else requested


def wrap_for_training(module: nn.Module, inner_model: nn.Module, parallel: str, ctx: DistContext) -> nn.Module:
    """Wrap the loss module for `parallel` in {'none', 'ddp', 'fsdp2'}; returns what the loop calls."""
    if parallel == "none":
        return module
    if parallel == "ddp":
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
    if parallel == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        for layer in decoder_layers(inner_model):
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    raise ValueError(f"unknown parallel mode {parallel!r}; choose none, ddp or fsdp2")


@contextlib.contextmanager
def gradient_sync(wrapped: nn.Module, parallel: str, sync: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on all but the last micro-batch of an accumulation window."""
    if parallel == "ddp" and not sync:
        with wrapped.no_sync():
            yield
    elif parallel == "fsdp2":
        wrapped.set_requires_gradient_sync(sync)
        yield
    else:
        yield


def grad_mean_factor(parallel: str, ctx: DistContext) -> int:
    """DDP and FSDP2 average gradients over processes; multiply by this to get their sum back."""
    return ctx.world_size if parallel in ("ddp", "fsdp2") else 1
