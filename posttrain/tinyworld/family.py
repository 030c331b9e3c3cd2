"""What every task family provides, and the helpers the family modules share."""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from posttrain.data.records import Message, Prompt, ToolDef
from posttrain.judge.grader import Grade
from posttrain.tinyworld.facts import Split


@dataclass(frozen=True)
class Family:
    """A task family: prompts, what a perfect model answers, a grader, and a way to spoil an answer.

    `corrupt` turns a reference answer into a plausible wrong one (wrong number, broken constraint),
    for the deliberately noisy SFT data that rejection sampling and DPO must then fix.
    """

    name: str
    generate_prompts: Callable[[Split, int, int], list[Prompt]]
    reference_solution: Callable[[Prompt], list[Message]]
    grade: Callable[[Prompt, list[Message]], Grade]
    corrupt: Callable[[Prompt, list[Message], random.Random], list[Message]]


def family_rng(family: str, split: Split, seed: int) -> random.Random:
    """A generator private to (family, split, seed): string seeds are stable across processes."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return random.Random(f"tinyworld/{family}/{split}/{seed}")


def make_prompt(family: str, messages: list[tuple[str, str]], *, tags: list[str], difficulty: float,
                check: dict[str, Any], tools: list[ToolDef] | None = None) -> Prompt:
    """A Prompt from (role, text) pairs."""
    return Prompt(messages=[Message(role=role, content=text) for role, text in messages], tools=tools,
                  family=family, tags=tags, difficulty=difficulty, check=check)


def distinct_prompts(draw: Callable[[random.Random], Prompt], n: int, rng: random.Random) -> list[Prompt]:
    """n prompts with distinct texts drawn by `draw`; raises when the space looks exhausted."""
    prompts: list[Prompt] = []
    seen: set[str] = set()
    attempts = 0
    while len(prompts) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise ValueError(f"could only draw {len(prompts)} distinct prompts of {n}")
        prompt = draw(rng)
        if prompt.id not in seen:
            seen.add(prompt.id)
            prompts.append(prompt)
    return prompts


def answer(text: str) -> list[Message]:
    """A response made of one assistant message."""
    return [Message(role="assistant", content=text)]


def user_texts(prompt: Prompt) -> list[str]:
    """The user turns' texts, in order."""
    return [m.content or "" for m in prompt.messages if m.role == "user"]
