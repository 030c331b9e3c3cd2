"""The tiny world's task families in one place: dispatching grader, SFT data, eval prompts."""
from __future__ import annotations

import random

from posttrain.data.records import Conversation, Message, Meta, Prompt
from posttrain.judge.grader import Grade
from posttrain.tinyworld.families import instruction_following, math, multi_turn, safety, steerability, tool_use
from posttrain.tinyworld.family import Family
from posttrain.tinyworld.tools import TOOLS, execute_tool_call

__all__ = ["FAMILIES", "TOOLS", "TinyWorldGrader", "eval_prompts", "execute_tool_call", "grade",
           "reference_conversations", "sft_conversations"]

FAMILIES: dict[str, Family] = {
    module.FAMILY.name: module.FAMILY
    for module in (math, instruction_following, tool_use, safety, multi_turn, steerability)
}


def grade(prompt: Prompt, response: list[Message]) -> Grade:
    """Grade a response with its prompt's family grader."""
    family = FAMILIES.get(prompt.family or "")
    if family is None:
        raise ValueError(f"prompt {prompt.id}: unknown tiny-world family {prompt.family!r}")
    return family.grade(prompt, response)


class TinyWorldGrader:
    """The `judge.grader.Grader` of the whole tiny world (dispatches on `prompt.family`)."""

    def grade(self, prompt: Prompt, response: list[Message]) -> Grade:
        return grade(prompt, response)


def sft_conversations(n_per_family: int, seed: int, noise: float = 0.0) -> list[Conversation]:
    """Train prompts answered by their reference solutions, n per family.

    `noise` is the share of each family's answers deliberately corrupted (wrong number, broken
    constraint, needless tool call...): exactly round(noise * n) of them, marked `meta.corrupted`,
    so later stages have something to repair and tests can count it.
    """
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    conversations = []
    for name, family in FAMILIES.items():
        rng = random.Random(f"tinyworld/noise/{name}/{seed}")
        prompts = family.generate_prompts("train", n_per_family, seed)
        spoiled = set(rng.sample(range(len(prompts)), round(noise * len(prompts))))
        for index, prompt in enumerate(prompts):
            response = family.reference_solution(prompt)
            if index in spoiled:
                response = family.corrupt(prompt, response, rng)
            meta = Meta(stage="tinyworld", seed=seed, source="tinyworld.sft_conversations",
                        family=name, prompt_id=prompt.id, corrupted=index in spoiled)
            conversations.append(Conversation(messages=prompt.messages + response, tools=prompt.tools, meta=meta))
    return conversations


def reference_conversations(prompts: list[Prompt]) -> list[Conversation]:
    """The prompts answered by their family's reference solution (never corrupted)."""
    return [Conversation(messages=p.messages + FAMILIES[p.family].reference_solution(p), tools=p.tools,
                         meta=Meta(source="tinyworld.reference_conversations", family=p.family, prompt_id=p.id))
            for p in prompts]


def eval_prompts(n_per_family: int, seed: int) -> list[Prompt]:
    """Eval-split prompts, n per family, in FAMILIES order."""
    return [prompt for family in FAMILIES.values() for prompt in family.generate_prompts("eval", n_per_family, seed)]
