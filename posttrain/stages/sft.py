"""Stage `sft`: supervised fine-tuning on conversations, loss on the assistant's tokens only.

Each `data` input is one source of the mixture, named by its stage id (or file stem); `mixture`
weights up- or down-sample sources (Nemotron-4's second SFT stage keeps 2% of the code stage's data
with `mixture: {code_sft: 0.02}`). A two-stage SFT is two `sft` stages, the second's `model` input
referencing the first.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.stages.base import Stage, StageContext, StageResult
from posttrain.train.config import SFTConfig


class SFTStageConfig(SFTConfig):
    max_tokens: int = Field(512, ge=8, description="longest tokenized conversation; longer ones follow on_overflow")
    on_overflow: Literal["drop", "truncate"] = Field("drop", description="too-long conversations: drop (logged) or truncate")
    data_files: list[str] = Field(["sft.jsonl", "data.jsonl"], description="file names looked up in data artifacts")
    keep_checkpoints: bool = Field(False, description="keep resume checkpoints after the stage finished")


def source_name(path) -> str:
    """A data source's name for the mixture: the stage directory's name, or the file's stem."""
    return path.stem if path.is_file() else path.name


class SFT(Stage):
    kind = "sft"
    version = 1
    distributed = True
    Config = SFTStageConfig
    inputs = {"model": True, "data": True}
    description = "Supervised fine-tuning (packed, assistant-only loss, NEFTune, mixtures, LoRA, resume)."

    def run(self, config: SFTStageConfig, ctx: StageContext) -> StageResult:
        from posttrain.data.chat_templates import detect_template, end_of_turn_ids
        from posttrain.models.loading import load_causal_lm
        from posttrain.models.runtime import set_cpu_threads
        from posttrain.stages.artifacts import drop_checkpoints, find_data_file, model_dir
        from posttrain.stages.conversations import tokenized_conversations
        from posttrain.train.sft import run_sft

        set_cpu_threads()
        model, tokenizer = load_causal_lm(model_dir(ctx.input("model")))
        template = detect_template(tokenizer)
        by_source, rows = {}, 0
        for path in ctx.inputs_of("data"):
            files = [find_data_file(path, config.data_files)]
            examples, read = tokenized_conversations(ctx, files, tokenizer, template, config.max_tokens,
                                                     config.on_overflow)
            by_source[source_name(path)] = examples
            rows += read
        train_config = SFTConfig(**config.model_dump(include=set(SFTConfig.model_fields)))
        summary = run_sft(model, tokenizer, by_source, train_config, ctx.out_dir, log_fn=ctx.log_metrics,
                          eos_token_ids=end_of_turn_ids(tokenizer, template))
        if not config.keep_checkpoints:
            drop_checkpoints(ctx.out_dir)
        tokens = sum(len(e["input_ids"]) for ex in by_source.values() for e in ex)
        return StageResult(
            counts={"input_rows": rows, "examples": sum(len(v) for v in by_source.values()), "tokens": tokens,
                    "steps": summary["steps"], "skipped_steps": summary["skipped_steps"]},
            metrics={"final_loss": summary["final_loss"], "train_seconds": round(summary["seconds"], 1),
                     "tokens_per_second": round(tokens * train_config.epochs / max(summary["seconds"], 1e-9))},
            outputs=summary["outputs"],
        )

