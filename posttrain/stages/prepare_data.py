"""Stage `prepare_data`: validate conversations, tokenize them with the chat template, pack them.

Malformed rows are quarantined (file, line, field, reason); conversations over the length budget
are dropped (or truncated) by the one length policy; the valid conversations are written to
`data.jsonl` and the packing of their token counts is reported (rows, fill), so a user sees what a
training stage will get before it runs.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult


class PrepareDataConfig(StageConfig):
    max_tokens: int = Field(512, ge=8, description="longest tokenized conversation; longer ones follow on_overflow")
    on_overflow: Literal["drop", "truncate"] = Field("drop", description="too-long conversations: drop (logged) or truncate")
    pack_tokens: int = Field(2048, ge=8, description="token budget of one packed row, for the packing report")
    data_files: list[str] = Field(["data.jsonl", "sft.jsonl"], description="file names looked up in data artifacts")


class PrepareData(Stage):
    kind = "prepare_data"
    version = 1
    Config = PrepareDataConfig
    inputs = {"conversations": True, "tokenizer": True}
    description = "Validate, tokenize and pack conversations; quarantine malformed rows with file, line and reason."

    def run(self, config: PrepareDataConfig, ctx: StageContext) -> StageResult:
        from posttrain.data.chat_templates import detect_template
        from posttrain.data.io import RecordReader, write_records
        from posttrain.data.lengths import LengthPolicy
        from posttrain.data.packing import pack_best_fit_decreasing
        from posttrain.data.records import Conversation
        from posttrain.models.loading import load_tokenizer
        from posttrain.stages.artifacts import find_data_file, model_dir
        from posttrain.stages.conversations import fitted_conversations

        tokenizer = load_tokenizer(model_dir(ctx.input("tokenizer")))
        template = detect_template(tokenizer)
        policy = LengthPolicy(max_tokens=config.max_tokens, on_overflow=config.on_overflow)
        reader = RecordReader(Conversation, ctx.quarantine)
        files = [find_data_file(path, config.data_files) for path in ctx.inputs_of("conversations")]
        kept, lengths, loss_tokens = [], [], 0
        for conv, ids, mask in fitted_conversations(ctx, reader, files, tokenizer, template, policy):
            kept.append(conv)
            lengths.append(len(ids))
            loss_tokens += sum(mask)
        write_records(ctx.out_dir / "data.jsonl", kept)
        rows = pack_best_fit_decreasing(lengths, config.pack_tokens) if lengths else []
        fill = sum(lengths) / (len(rows) * config.pack_tokens) if rows else 0.0
        return StageResult(
            counts={"input_rows": reader.stats.rows, "output_rows": len(kept), "tokens": sum(lengths),
                    "loss_tokens": loss_tokens, "packed_rows": len(rows)},
            metrics={"packing_fill": round(fill, 4), "template": template,
                     "mean_tokens": round(sum(lengths) / max(len(lengths), 1), 1)},
            outputs={"data": "data.jsonl"},
        )
