"""Evaluate a model on held-out prompts: generate, grade, aggregate per family with intervals.

The graders are the same ones rejection sampling, preference labelling and RL rewards use; the
stage hands them in (evaluate/ does not know which world the prompts come from).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

from posttrain.data.records import Completion, Message, Prompt, Response, ToolCall, ToolDef
from posttrain.evaluate.intervals import wilson_interval
from posttrain.generate.base import Generator, SamplingParams
from posttrain.generate.chat import generate_chat
from posttrain.judge.grader import Grade, Grader

ToolHook = Callable[[ToolCall, "list[ToolDef] | None"], str]


@dataclass
class FamilyScore:
    """Mean score of one family with its 95% Wilson interval, and the pass rate (score == 1)."""

    n: int
    score: float
    low: float
    high: float
    pass_rate: float

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "score": self.score, "low": self.low, "high": self.high, "pass_rate": self.pass_rate}


@dataclass
class EvalResult:
    completions: list[Completion]
    scores: dict[str, FamilyScore]  # family (and "overall") -> score
    tag_rates: dict[str, FamilyScore] = field(default_factory=dict)  # "family/tag" -> score, e.g. safety/safe_lookalike
    failures: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # family -> a few failed examples


def aggregate(prompts: list[Prompt], grades: list[Grade], key: Callable[[Prompt], list[str]]) -> dict[str, FamilyScore]:
    """Group grades by `key(prompt)` (a prompt may fall in several groups) into FamilyScores."""
    groups: dict[str, list[Grade]] = defaultdict(list)
    for prompt, grade in zip(prompts, grades):
        for name in key(prompt):
            groups[name].append(grade)
    out = {}
    for name in sorted(groups):
        gs = groups[name]
        total = sum(g.score for g in gs)
        low, high = wilson_interval(total, len(gs))
        out[name] = FamilyScore(n=len(gs), score=total / len(gs), low=low, high=high,
                                pass_rate=sum(g.passed for g in gs) / len(gs))
    return out


def _render(messages: list[Message]) -> str:
    parts = []
    for msg in messages:
        text = msg.content or ""
        if msg.tool_calls:
            text += " ".join(f"[call {c.function.name}({c.function.arguments})]" for c in msg.tool_calls)
        parts.append(f"{msg.role}: {text}")
    return "\n".join(parts)


def collect_failures(prompts: list[Prompt], responses: list[list[Message]], grades: list[Grade],
                     per_family: int = 3) -> dict[str, list[dict[str, str]]]:
    """The first few failed examples of each family, as text for the report."""
    failures: dict[str, list[dict[str, str]]] = defaultdict(list)
    for prompt, response, grade in zip(prompts, responses, grades):
        family = prompt.family or "unknown"
        if not grade.passed and len(failures[family]) < per_family:
            failures[family].append({"prompt": _render(prompt.messages), "response": _render(response),
                                     "reason": grade.reason})
    return dict(failures)


def evaluate_prompts(generator: Generator, tokenizer, prompts: list[Prompt], grader: Grader, *,
                     template: str, params: SamplingParams, tool_hook: ToolHook | None = None,
                     model_name: str = "") -> EvalResult:
    """Greedy (or as `params` say) answers to every prompt, graded and aggregated per family."""
    conversations = [(p.messages, p.tools) for p in prompts]
    responses = generate_chat(generator, tokenizer, conversations, params, template=template, tool_hook=tool_hook)
    grades = [grader.grade(p, r) for p, r in zip(prompts, responses)]
    completions = [
        Completion(prompt=p, responses=[Response(messages=r, score=g.score, reason=g.reason)],
                   meta={"model": model_name})
        for p, r, g in zip(prompts, responses, grades)
    ]
    scores = aggregate(prompts, grades, lambda p: [p.family or "unknown", "overall"])
    tag_rates = aggregate(prompts, grades, lambda p: [f"{p.family}/{t}" for t in p.tags])
    return EvalResult(completions=completions, scores=scores, tag_rates=tag_rates,
                      failures=collect_failures(prompts, responses, grades))
