"""Build a Scorer from a recipe's scorer config: one spec, or a weighted list of them.

    scorer: {type: grader}                                  the task's programmatic graders (default)
    scorer: {type: reward_model, path: runs/x/rm/model}     a trained reward model (or the stage's reward_model input)
    scorer: {type: llm_judge, backend: {type: openai, base_url: ..., model: ...}}   1-10 grading by an LLM
    scorer: [{type: reward_model, weight: 1.0}, {type: grader, weight: 2.0}]        sum of weight * score
    scorer: [{type: reward_model, path: A, options: {normalize: true}},
             {type: reward_model, path: B, options: {normalize: true}}]              an ensemble of reward models,
                                                                                     each on its recorded scale

Importing this module is cheap (pydantic only); reward models and judge backends are imported when built.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from posttrain.generate.factory import BackendConfig
from posttrain.judge.grader import Grader
from posttrain.judge.scorer import GraderScorer, Scorer, WeightedScorer


class ScorerSpec(BaseModel):
    """One scorer and its weight in a combination."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["grader", "reward_model", "llm_judge"] = Field("grader", description="what scores a response")
    weight: float = Field(1.0, description="its weight when several scorers are combined")
    name: str | None = Field(None, description="name in reasons and reports (default: the type)")
    path: str | None = Field(None, description="reward_model: model directory (default: the stage's reward_model input)")
    backend: BackendConfig | None = Field(None, description="llm_judge: the judge's backend (hf uses the stage's judge model input)")
    max_new_tokens: int = Field(256, ge=1, description="llm_judge: longest judge reply")
    options: dict[str, Any] = Field(default_factory=dict, description="extra keyword arguments for the scorer")


ScorerConfig = ScorerSpec | list[ScorerSpec]


def scorer_specs(config: ScorerConfig | dict | list) -> list[ScorerSpec]:
    """The config as a list of validated specs."""
    items = config if isinstance(config, list) else [config]
    specs = [ScorerSpec.model_validate(item) for item in items]
    if not specs:
        raise ValueError("scorer config lists no scorer")
    return specs


def build_scorer(config: ScorerConfig | dict | list, *, grader: Grader | None = None,
                 reward_model_path: Path | str | None = None, judge_model_path: Path | str | None = None,
                 cache_dir: Path | str | None = None, seed: int = 0) -> Scorer:
    """The Scorer `config` describes; a list becomes a WeightedScorer. `grader` serves `type: grader`
    (the caller knows the task's graders: the tiny world's, or another task's)."""
    specs = scorer_specs(config)
    built = [_build_one(spec, grader, reward_model_path, judge_model_path, cache_dir, seed) for spec in specs]
    if len(specs) == 1 and specs[0].weight == 1.0:
        return built[0]
    return WeightedScorer([(scorer, spec.weight) for scorer, spec in zip(built, specs)])


def _build_one(spec: ScorerSpec, grader, reward_model_path, judge_model_path, cache_dir, seed) -> Scorer:
    name = spec.name or spec.type
    if spec.type == "grader":
        if grader is None:
            raise ValueError("scorer type grader: this stage has no grader for its prompts")
        return GraderScorer(grader, name=name)
    if spec.type == "reward_model":
        return _reward_model(spec, spec.path or reward_model_path, name)
    return _llm_judge(spec, judge_model_path, cache_dir, seed, name)


def _reward_model(spec: ScorerSpec, path, name: str) -> Scorer:
    if path is None:
        raise ValueError("scorer type reward_model needs `path` or a reward_model input")
    from posttrain.judge.reward_scorer import RewardModelScorer

    return RewardModelScorer(path, name=name, **spec.options)


def _llm_judge(spec: ScorerSpec, judge_model_path, cache_dir, seed: int, name: str) -> Scorer:
    from posttrain.generate.base import SamplingParams
    from posttrain.generate.factory import build_chat_backend
    from posttrain.judge.llm_judge import JudgeScorer

    backend = build_chat_backend(spec.backend or BackendConfig(), model_path=judge_model_path,
                                 cache_dir=cache_dir, max_tool_rounds=0)
    params = SamplingParams(max_new_tokens=spec.max_new_tokens, temperature=0.0)
    return JudgeScorer(backend, params, seed=seed, name=name, **spec.options)
