"""The grader contract: one score in [0, 1] and a reason, for one prompt and one response.

The same graders serve evaluation, rejection-sampling filters, preference labels and RL rewards, so
there is no skew between what is measured and what is optimised. A response is the assistant's
messages for the prompt: possibly an assistant tool call, the tool message with its result, then
the final assistant answer.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from posttrain.data.records import Message, Prompt


@dataclass(frozen=True)
class Grade:
    """A score in [0, 1] (1 = fully right) and a short human-readable reason."""

    score: float
    reason: str

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"grade score must be in [0, 1], got {self.score}")

    @property
    def passed(self) -> bool:
        """Fully right: what rejection sampling keeps and pass-rate metrics count."""
        return self.score >= 1.0


@runtime_checkable
class Grader(Protocol):
    """Anything that scores a response to a prompt."""

    def grade(self, prompt: Prompt, response: list[Message]) -> Grade: ...


def final_answer(response: list[Message]) -> str:
    """The content of the last assistant message that has text ('' when there is none)."""
    for message in reversed(response):
        if message.role == "assistant" and message.content:
            return message.content
    return ""


def grade_checks(checks: list[tuple[str, bool]]) -> Grade:
    """Fraction of named checks that passed; the reason lists every check as ok/FAILED.

    Partial credit gives RL a graded signal; filters that need a perfect answer use `Grade.passed`.
    """
    if not checks:
        raise ValueError("grade_checks needs at least one check")
    passed = sum(1 for _, ok in checks if ok)
    parts = [f"{name}: {'ok' if ok else 'FAILED'}" for name, ok in checks]
    return Grade(score=passed / len(checks), reason="; ".join(parts))
