"""One scoring interface for everything that ranks responses: graders, LLM judges, reward models.

Rejection sampling, preference labelling and RL rewards take a `Scorer`, so any of them (or a weighted
combination) can be swapped in without touching the stage. A grader's scores lie in [0, 1]; a reward
model's are unbounded reals: combine them with weights that suit their scales.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from posttrain.data.records import Message, Prompt
from posttrain.judge.grader import Grader


@dataclass(frozen=True)
class Score:
    """A real-valued score (higher is better) and, where the scorer has one, a reason."""

    value: float
    reason: str = ""


@runtime_checkable
class Scorer(Protocol):
    """Scores a batch of (prompt, response) pairs; batched so a reward model can run them together."""

    name: str

    def score(self, prompts: list[Prompt], responses: list[list[Message]]) -> list[Score]: ...


class GraderScorer:
    """A programmatic grader as a Scorer (score in [0, 1], with the grader's reason)."""

    def __init__(self, grader: Grader, name: str = "grader"):
        self.grader = grader
        self.name = name

    def score(self, prompts: list[Prompt], responses: list[list[Message]]) -> list[Score]:
        grades = [self.grader.grade(p, r) for p, r in zip(prompts, responses)]
        return [Score(g.score, g.reason) for g in grades]


class FixedScores:
    """Scores computed once, handed back in order: a model's rewards reused (say in an ensemble) without scoring again."""

    def __init__(self, values: list[float], name: str = "fixed"):
        self.values = list(values)
        self.name = name

    def score(self, prompts: list[Prompt], responses: list[list[Message]]) -> list[Score]:
        if len(prompts) != len(self.values) or len(responses) != len(self.values):
            raise ValueError(f"{self.name}: {len(self.values)} scores for {len(prompts)} prompts and "
                             f"{len(responses)} responses")
        return [Score(v) for v in self.values]


class WeightedScorer:
    """sum_i w_i * scorer_i: e.g. a reward model combined with the graders where ground truth exists."""

    def __init__(self, scorers: list[tuple[Scorer, float]], name: str = "weighted"):
        if not scorers:
            raise ValueError("WeightedScorer needs at least one scorer")
        self.scorers = scorers
        self.name = name

    def score(self, prompts: list[Prompt], responses: list[list[Message]]) -> list[Score]:
        columns = [(scorer.score(prompts, responses), weight, scorer.name) for scorer, weight in self.scorers]
        out = []
        for i in range(len(prompts)):
            value = sum(weight * scores[i].value for scores, weight, _ in columns)
            reason = "; ".join(f"{name}={scores[i].value:.3g}" for scores, _, name in columns)
            out.append(Score(value, reason))
        return out
