"""The engine's one typed config: optimizer, schedule, batching, checkpoints, guards, adapters.

Every algorithm (SFT, reward model, DPO, RL, distillation) trains with these fields; an algorithm's
own config subclasses `TrainConfig` and adds only what is its own (e.g. SFT's data mixture).
This module imports pydantic only, so a stage's config can embed these without importing torch.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LoraSettings(BaseModel):
    """Low-rank adapters (Hu et al. 2021, "LoRA"): W + (alpha / r) * B A on the target modules."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1, description="rank of the adapter matrices A (r, in) and B (out, r)")
    alpha: float = Field(32.0, gt=0, description="scale numerator: the update is (alpha / r) * B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="module names (suffixes) that get adapters",
    )
    merge_on_save: bool = Field(
        True, description="save the final model with adapters merged into the weights (else the adapter only)"
    )


class TrainConfig(BaseModel):
    """Optimizer, schedule, batching, checkpointing and guards shared by every training algorithm."""

    model_config = ConfigDict(extra="forbid")

    # Optimizer: AdamW (Loshchilov & Hutter 2019). Weight decay is applied to matrices of linear
    # layers only; norms, biases and embeddings are left undecayed (decay pulls a norm's gain toward
    # zero and shrinks rare tokens' embeddings, which is not regularisation we want).
    lr: float = Field(1e-5, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay on linear weights only")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW (beta1, beta2)")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps from 0 to lr (wins over warmup_ratio)")
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="warmup as a share of total steps, when warmup_steps is 0")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="decay after warmup")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine/linear decay floor as a share of lr")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this; None = no clip")

    # Length of training.
    epochs: int = Field(1, ge=1, description="passes over the data")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (wins over epochs)")

    # Batching. One optimizer step = accumulation micro-batches on each of world_size processes.
    micro_batch_tokens: int = Field(4096, ge=1, description="token budget of one packed micro-batch row")
    accumulation: int = Field(1, ge=1, description="micro-batches per process per optimizer step")

    seed: int = Field(0, description="seeds data order, sampling and any noise; data order = f(seed, epoch)")

    # Checkpoints (atomic, at optimizer-step boundaries) and guards.
    checkpoint_every: int = Field(0, ge=0, description="write a resumable checkpoint every N steps; 0 = only at the end")
    keep_last: int = Field(2, ge=1, description="checkpoints kept; older ones are deleted after a new one is complete")
    max_consecutive_skips: int = Field(
        3, ge=0, description="abort (after a checkpoint) when more than this many steps in a row are non-finite"
    )

    # Memory and model tricks.
    gradient_checkpointing: bool = Field(False, description="recompute activations in backward to save memory")
    lora: LoraSettings | None = Field(None, description="train LoRA adapters instead of all weights")
    neftune_alpha: float | None = Field(None, gt=0, description="NEFTune noise scale on input embeddings (5 is typical)")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="compute dtype: auto = float32 on CPU, bf16 autocast on GPU; weights stay float32"
    )
    parallel: Literal["auto", "none", "ddp", "fsdp2"] = Field(
        "auto", description="multi-process wrapping: auto = ddp when world_size > 1, else none"
    )
    logprob_chunk_size: int = Field(1024, ge=1, description="tokens per chunk of the LM head + log-softmax")

    # Logging.
    log_every: int = Field(1, ge=1, description="emit metrics every N optimizer steps")
    peak_flops: float | None = Field(
        None, gt=0, description="device peak FLOP/s for MFU; None = look up known GPUs, else no MFU"
    )
    tensorboard_dir: str | None = Field(None, description="also write metrics to TensorBoard here, when importable")
    wandb_project: str | None = Field(None, description="also log to this W&B project, when wandb is importable")

    @model_validator(mode="after")
    def _betas_in_range(self) -> "TrainConfig":
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {self.betas}")
        return self

    def warmup_for(self, total_steps: int) -> int:
        """Warmup steps for a run of `total_steps` optimizer steps."""
        if self.warmup_steps:
            return self.warmup_steps
        return int(round(self.warmup_ratio * total_steps))


class SFTConfig(TrainConfig):
    """TrainConfig plus SFT's data mixture and packing window."""

    mixture: dict[str, float] = Field(
        default_factory=dict, description="per-source weight (examples per epoch = weight x size); missing = 1"
    )
    packing_window: int = Field(
        1024, ge=1, description="examples packed together (best-fit decreasing) before rows are shuffled"
    )
