"""Shared by stages that train on conversations: read with quarantine, tokenize, apply the length policy."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from posttrain.stages.base import StageContext


def fitted_conversations(ctx: StageContext, reader: Any, files: list[Path], tokenizer: Any, template: str,
                         policy: Any) -> Iterator[tuple[Any, list[int], list[int]]]:
    """(conversation, input ids, assistant mask) for each row that fits the length policy.

    `reader` (a RecordReader of Conversation) sends malformed rows to ctx.quarantine (with file, line,
    field); conversations over the budget go to ctx.dropped with reason `too_long` (or are truncated,
    as the policy says). The quarantine share is checked once every file is read.
    """
    from posttrain.data.lengths import TOO_LONG, fit_sequence
    from posttrain.data.tokenize import tokenize_conversation

    for path in files:
        for conv in reader.iter(path):
            chat = tokenize_conversation(tokenizer, conv.messages, conv.tools, template)
            fitted = fit_sequence(chat.input_ids, [int(m) for m in chat.assistant_mask], policy)
            if fitted is None:
                ctx.dropped.add(TOO_LONG, file=str(path), row={"id": conv.id},
                                detail=f"{len(chat.input_ids)} tokens > {policy.max_tokens}")
                continue
            yield conv, *fitted
    reader.stats.check_share(ctx.max_quarantine_share, f"stage {ctx.stage_id}")


def tokenized_conversations(ctx: StageContext, files: list[Path], tokenizer: Any, template: str,
                            max_tokens: int, on_overflow: str) -> tuple[list[dict], int]:
    """Examples {"input_ids", "loss_mask", "id"} from conversation files; returns (examples, rows read)."""
    from posttrain.data.io import RecordReader
    from posttrain.data.lengths import LengthPolicy
    from posttrain.data.records import Conversation

    reader = RecordReader(Conversation, ctx.quarantine)
    policy = LengthPolicy(max_tokens=max_tokens, on_overflow=on_overflow)
    examples = [{"input_ids": ids, "loss_mask": [bool(m) for m in mask], "id": conv.id}
                for conv, ids, mask in fitted_conversations(ctx, reader, files, tokenizer, template, policy)]
    return examples, reader.stats.rows
