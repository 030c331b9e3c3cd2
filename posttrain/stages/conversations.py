"""Shared by stages that train on conversations: read with quarantine, tokenize, apply the length policy."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from posttrain.stages.base import StageContext


def tokenized_conversations(ctx: StageContext, files: list[Path], tokenizer: Any, template: str,
                            max_tokens: int, on_overflow: str) -> tuple[list[dict], int]:
    """Examples {"input_ids", "loss_mask"} from conversation files; returns (examples, rows read).

    Malformed rows go to ctx.quarantine (with file, line, field); conversations over the length
    budget go to ctx.dropped with reason `too_long` (or are truncated, as the policy says).
    """
    from posttrain.data.io import RecordReader
    from posttrain.data.lengths import TOO_LONG, LengthPolicy, fit_sequence
    from posttrain.data.records import Conversation
    from posttrain.data.tokenize import tokenize_conversation

    policy = LengthPolicy(max_tokens=max_tokens, on_overflow=on_overflow)
    reader = RecordReader(Conversation, ctx.quarantine)
    examples = []
    for path in files:
        for conv in reader.iter(path):
            chat = tokenize_conversation(tokenizer, conv.messages, conv.tools, template)
            fitted = fit_sequence(chat.input_ids, [int(m) for m in chat.assistant_mask], policy)
            if fitted is None:
                ctx.dropped.add(TOO_LONG, file=str(path), detail=f"{len(chat.input_ids)} tokens > {max_tokens}",
                                row={"id": conv.id})
                continue
            ids, mask = fitted
            examples.append({"input_ids": ids, "loss_mask": [bool(m) for m in mask], "id": conv.id})
    reader.stats.check_share(ctx.max_quarantine_share, f"stage {ctx.stage_id}")
    return examples, reader.stats.rows
