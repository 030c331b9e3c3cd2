"""Supervised fine-tuning on the engine: tokenized examples -> mixture -> packed micro-batches -> steps.

Each epoch: sample the mixture (pure in seed and epoch), cut the order into windows, pack each
window best-fit-decreasing into rows of at most `micro_batch_tokens` tokens (length bucketing:
sequences of a window are packed together, so rows come out full), shuffle the rows, and group
`accumulation x world_size` rows per optimizer step, each process taking rows[rank::world]. The loss
is the summed token NLL (`posttrain.losses.sft.sft_loss`) divided by the step's loss-token count.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Sequence

from posttrain.data.packing import PackedBatch, collate_packed, pack_best_fit_decreasing
from posttrain.losses.sft import sft_loss
from posttrain.models.forward import unwrap_model
from posttrain.models.loading import ensure_architectures, save_causal_lm, save_state_dict_as_hf
from posttrain.models.logprobs import packed_token_logprobs
from posttrain.train.adapters import is_lora, save_adapter
from posttrain.train.config import SFTConfig
from posttrain.train.distributed import DistContext, barrier, init_distributed, rank_steps
from posttrain.train.engine import LossFn, LossOutput, Trainer, plan_total_steps
from posttrain.train.mixture import mixture_rng, sample_mixture
from posttrain.train.step_log import LogFn

__all__ = ["SFTConfig", "SFTData", "SFTPlan", "run_sft", "save_final_model", "sft_loss_fn"]

# A one-token row with no loss: pads a step so every process runs the same number of micro-batches.
_EMPTY_ROW = {"input_ids": [0], "loss_mask": [False]}


@dataclasses.dataclass
class SFTData:
    """Examples by source, with the ones that cannot train removed and counted by reason."""

    examples: dict[str, list[Mapping[str, Any]]]
    dropped: dict[str, int]

    @classmethod
    def filter(cls, examples_by_source: Mapping[str, Sequence[Mapping[str, Any]]], budget: int) -> "SFTData":
        kept, dropped = {}, {"too_long": 0, "no_loss_tokens": 0}
        for source, examples in examples_by_source.items():
            kept[source] = []
            for example in examples:
                if len(example["input_ids"]) > budget:
                    dropped["too_long"] += 1
                elif not any(example["loss_mask"]):
                    dropped["no_loss_tokens"] += 1
                else:
                    kept[source].append(example)
        return cls(kept, dropped)


class _EpochSteps(Sequence):
    """This process's micro-batches for each step of one epoch; rows are collated when a step is read."""

    def __init__(self, steps: list[list[list[Mapping[str, Any]]]]):
        self._steps = steps  # step -> this rank's rows -> examples in the row

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, index: int) -> list[PackedBatch]:
        return [collate_packed(row) for row in self._steps[index]]


class SFTPlan:
    """The SFT StepPlan: a pure function of (data, config, seed, epoch, rank, world size)."""

    def __init__(self, data: SFTData, config: SFTConfig, ctx: DistContext):
        self.data, self.config, self.ctx = data, config, ctx
        self.epochs = config.epochs
        self._cache: dict[int, _EpochSteps] = {}

    def rows(self, epoch: int) -> list[list[Mapping[str, Any]]]:
        """The epoch's packed rows (examples per row), in training order, for all processes."""
        sizes = {source: len(examples) for source, examples in self.data.examples.items()}
        order = sample_mixture(sizes, self.config.mixture, self.config.seed, epoch)
        rows: list[list[Mapping[str, Any]]] = []
        window = self.config.packing_window
        for start in range(0, len(order), window):
            chunk = [self.data.examples[source][index] for source, index in order[start : start + window]]
            packed = pack_best_fit_decreasing([len(e["input_ids"]) for e in chunk], self.config.micro_batch_tokens)
            rows.extend([chunk[i] for i in row] for row in packed)
        shuffle = mixture_rng(self.config.seed, epoch, "rows").permutation(len(rows))
        return [rows[i] for i in shuffle]

    def steps(self, epoch: int) -> _EpochSteps:
        if epoch not in self._cache:
            steps = rank_steps(self.rows(epoch), self.config.accumulation, self.ctx, [_EMPTY_ROW])
            self._cache = {epoch: _EpochSteps(steps)}  # keep one epoch in memory
        return self._cache[epoch]


def sft_loss_fn(chunk_size: int) -> LossFn:
    """loss_fn(model, packed batch) for the engine: summed NLL of the loss tokens, normalised by their count."""

    def loss_fn(model, batch: PackedBatch) -> LossOutput:
        token_lp, loss_mask = packed_token_logprobs(model, batch, chunk_size)  # (1, T) each
        loss_sum, n_tokens, metrics = sft_loss(token_lp, loss_mask)
        return LossOutput(loss_sum, n_tokens, metrics)

    return loss_fn


def save_final_model(
    trainer: Trainer, tokenizer: Any, out_dir: Path, eos_token_ids: list[int] | None = None
) -> dict[str, str]:
    """Save the trained model as HF (adapters merged when asked), and the LoRA adapter alone when there is one."""
    outputs, lora = {}, trainer.config.lora
    base = unwrap_model(trainer.model)
    if trainer.parallel == "fsdp2":
        if lora is not None:
            raise NotImplementedError("LoRA with FSDP2 is not supported; use DDP for adapter training")
        ensure_architectures(base)
        state = trainer.full_model_state()  # collective: every rank gathers, rank 0 keeps it
        if trainer.ctx.is_main:
            save_state_dict_as_hf(
                state, base.config, tokenizer, out_dir / "model",
                eos_token_ids=eos_token_ids, generation_config=getattr(base, "generation_config", None),
            )
        outputs["model"] = "model"
    elif trainer.ctx.is_main:
        if is_lora(trainer.model):
            save_adapter(trainer.model, out_dir / "adapter")
            outputs["adapter"] = "adapter"
        if lora is None or lora.merge_on_save:
            save_causal_lm(trainer.model, tokenizer, out_dir / "model", eos_token_ids=eos_token_ids)
            outputs["model"] = "model"
    barrier(trainer.ctx)
    return outputs


def run_sft(
    model,
    tokenizer: Any,
    examples_by_source: Mapping[str, Sequence[Mapping[str, Any]]],
    config: SFTConfig,
    out_dir: Path | str,
    log_fn: LogFn | None = None,
    eos_token_ids: list[int] | None = None,
) -> dict[str, Any]:
    """Train `model` on tokenized examples ({"input_ids", "loss_mask"}) and save it in HF format.

    Checkpoints go to out_dir/checkpoints and a cut-off run resumes from the latest one; the final
    model goes to out_dir/model (and out_dir/adapter with LoRA). Works alike under torchrun.
    """
    out_dir = Path(out_dir)
    ctx = init_distributed()
    data = SFTData.filter(examples_by_source, config.micro_batch_tokens)
    if not any(data.examples.values()):
        raise ValueError(f"no SFT example can train (dropped: {data.dropped})")
    plan = SFTPlan(data, config, ctx)
    trainer = Trainer(
        model,
        config,
        sft_loss_fn(config.logprob_chunk_size),
        total_steps=plan_total_steps(plan, config.max_steps),
        checkpoint_dir=out_dir / "checkpoints",
        log_fn=log_fn,
        ctx=ctx,
    )
    fit = trainer.fit(plan)
    outputs = save_final_model(trainer, tokenizer, out_dir, eos_token_ids)
    return {
        **fit,  # steps, skipped_steps, final_loss, losses, seconds
        "examples": {source: len(examples) for source, examples in data.examples.items()},
        "dropped": data.dropped,
        "outputs": outputs,
    }
