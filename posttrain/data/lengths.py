"""The one over-long policy every stage uses: drop the row, or truncate it to fit.

A stage that drops a row logs it to `ctx.dropped` with reason `TOO_LONG`, so drops are counted
and auditable like every other policy drop.
"""
from __future__ import annotations

from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

TOO_LONG = "too_long"  # the dropped.jsonl reason for a row over max_tokens


class LengthPolicy(BaseModel):
    """How long a tokenized row may be, and what to do with one that is longer."""

    model_config = ConfigDict(extra="forbid")
    max_tokens: int = Field(gt=0, description="Most tokens a row (prompt + response) may have.")
    on_overflow: Literal["drop", "truncate"] = Field(
        "drop", description="drop: skip the row (logged as too_long); truncate: cut it to max_tokens."
    )


def apply_length_policy(
    prompt_ids: Sequence[int], response_ids: Sequence[int], policy: LengthPolicy
) -> tuple[list[int], list[int]] | None:
    """Fit a (prompt, response) pair into `policy.max_tokens`; None means drop it.

    Truncation removes prompt tokens from the left first (the start of a long context matters least
    for the answer), then response tokens from the right, and only once the prompt is gone.
    """
    prompt, response = list(prompt_ids), list(response_ids)
    excess = len(prompt) + len(response) - policy.max_tokens
    if excess <= 0:
        return prompt, response
    if policy.on_overflow == "drop":
        return None
    from_prompt = min(excess, len(prompt))
    prompt = prompt[from_prompt:]
    response = response[: len(response) - (excess - from_prompt)]
    return prompt, response


def fit_sequence(
    ids: Sequence[int], mask: Sequence[int], policy: LengthPolicy
) -> tuple[list[int], list[int]] | None:
    """Fit a whole tokenized conversation (ids + loss mask) into `policy.max_tokens`; None means drop it.

    Truncation cuts from the right. A cut that leaves no token with mask 1 gives None as well: the
    row would have nothing left to learn from.
    """
    if len(ids) != len(mask):
        raise ValueError(f"fit_sequence: {len(ids)} ids but {len(mask)} mask values")
    if len(ids) <= policy.max_tokens:
        return list(ids), list(mask)
    if policy.on_overflow == "drop":
        return None
    ids, mask = list(ids[: policy.max_tokens]), list(mask[: policy.max_tokens])
    return (ids, mask) if any(mask) else None
