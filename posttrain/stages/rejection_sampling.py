"""Stage `rejection_sampling`: K samples per prompt, scored; the best one kept as SFT data when good enough.

Llama 3 samples K = 10-30 responses from the latest checkpoint and keeps the reward model's best,
with capability-specific system prompts while sampling; Apple's iTeC samples from a committee of
checkpoints (bind several artifacts to `model`: the K samples are split across them); ground-truth
graders score wherever they exist (the default here, the tiny world's graders).

With a `completions` input (another rejection_sampling or generate stage's samples) nothing is
sampled: those samples of the selected prompts are scored again with this stage's scorer (a reward
model trained since, say) and the best kept as above.

Writes `data.jsonl` (the kept best responses as Conversations, without the sampling system prompt
unless `keep_system_prompt`), `completions.jsonl` (every sample with its score, for `pairs`), and per
prompt statistics (pass rate, score mean and spread, difficulty = 1 - pass rate) in each
completion's meta, summarised per family in the manifest.
"""
from __future__ import annotations

import math
from collections import defaultdict

from pydantic import Field

from posttrain.generate.factory import BackendConfig
from posttrain.judge.factory import ScorerConfig
from posttrain.stages.base import Stage, StageContext, StageResult
from posttrain.stages.generate import SamplingConfig


class RejectionSamplingConfig(SamplingConfig):
    samples: int = Field(8, ge=1, description="responses sampled per prompt (K), split across the models")
    backends: list[BackendConfig] = Field([{"type": "hf"}], validate_default=True, description="committee: an hf entry serves every model input; each other entry is one more member")
    scorer: ScorerConfig = Field({"type": "grader"}, validate_default=True, description="what ranks samples: {type: grader} (default), {type: reward_model}, {type: llm_judge}, or a weighted list")
    min_score: float = Field(1.0, description="the best sample is kept only when its score reaches this (grader: 1.0 = passed)")
    keep_system_prompt: bool = Field(False, description="keep the sampling system prompt in the SFT data")


def prompt_stats(scores: list[float], min_score: float) -> dict[str, float]:
    """Pass rate, mean and spread (population std) of one prompt's sample scores; difficulty = 1 - pass rate."""
    n = len(scores)
    if n == 0:
        return {"samples": 0}
    mean = sum(scores) / n
    pass_rate = sum(s >= min_score for s in scores) / n
    spread = math.sqrt(sum((s - mean) ** 2 for s in scores) / n)
    return {"samples": n, "pass_rate": pass_rate, "score_mean": mean, "score_spread": spread,
            "best_score": max(scores), "difficulty": 1.0 - pass_rate}


def difficulty_band(pass_rate: float) -> str:
    """A prompt's band for difficulty tagging: unsolved (0), hard (< 1/4), medium (< 3/4), easy."""
    if pass_rate == 0.0:
        return "unsolved"
    return "hard" if pass_rate < 0.25 else "medium" if pass_rate < 0.75 else "easy"


def family_summary(completions: list, kept_ids: set[str]) -> dict[str, dict]:
    """Per family (and overall): prompts, sample pass rate, solved share, score mean, mean spread, kept, bands."""
    groups: dict[str, list] = defaultdict(list)
    for c in completions:
        if c.meta.samples:  # type: ignore[attr-defined]
            groups[c.prompt.family or "unknown"].append(c)
            groups["overall"].append(c)
    summary = {}
    for name in sorted(groups):
        rows = groups[name]
        metas = [c.meta for c in rows]
        bands: dict[str, int] = defaultdict(int)
        for m in metas:
            bands[difficulty_band(m.pass_rate)] += 1
        summary[name] = {
            "prompts": len(rows),
            "pass_rate": sum(m.pass_rate * m.samples for m in metas) / sum(m.samples for m in metas),
            "solved": sum(m.pass_rate > 0 for m in metas) / len(rows),
            "score_mean": sum(m.score_mean for m in metas) / len(rows),
            "score_spread": sum(m.score_spread for m in metas) / len(rows),
            "kept": sum(c.prompt.id in kept_ids for c in rows),
            "difficulty": dict(sorted(bands.items())),
        }
    return summary


class RejectionSampling(Stage):
    kind = "rejection_sampling"
    version = 1
    Config = RejectionSamplingConfig
    inputs = {"prompts": True, "model": False, "reward_model": False, "judge_model": False, "completions": False}
    description = ("Sample K responses per prompt (one model or a committee), or take them from `completions`, "
                   "score them, keep the best as SFT data.")

    def run(self, config: RejectionSamplingConfig, ctx: StageContext) -> StageResult:
        from posttrain.data.io import write_records
        from posttrain.stages.generate import build_members, load_prompts, remove_shards, sample_prompts

        prompts = load_prompts(ctx, config)
        scorer = _scorer(ctx, config)
        if ctx.inputs.get("completions"):
            completions = _earlier_samples(ctx, prompts, config.samples)
            _score(scorer, completions)
            shard_counts: dict[str, int] = {}
            drawn_by = [c.meta.models[r.index] for c in completions for r in c.responses]  # type: ignore[attr-defined]
            models = sorted(set(drawn_by))
            per_model = [drawn_by.count(m) for m in models]
        else:
            members = build_members(ctx, config.backends, config)
            completions, shard_counts = sample_prompts(ctx, prompts, members, config,
                                                       score=lambda shard: _score(scorer, shard))
            models, per_model = [m.backend.name for m in members], [m.samples for m in members]
        for completion in completions:
            scores = [r.score for r in completion.responses if _scored(r)]
            for key, value in prompt_stats(scores, config.min_score).items():
                setattr(completion.meta, key, value)
        kept = list(_best_conversations(ctx, completions, config))
        write_records(ctx.out_dir / "completions.jsonl", completions)
        write_records(ctx.out_dir / "data.jsonl", kept)
        remove_shards(ctx)
        summary = family_summary(completions, {c.meta.prompt_id for c in kept})  # type: ignore[attr-defined]
        ctx.log_metrics({"rs/pass_rate": summary.get("overall", {}).get("pass_rate", 0.0), "rs/kept": len(kept)})
        return StageResult(
            counts={"input_rows": len(prompts), "completions": len(completions),
                    "responses": sum(len(c.responses) for c in completions), "kept": len(kept), **shard_counts},
            metrics={"families": summary, "models": models, "samples_per_model": per_model, "scorer": scorer.name,
                     "rescored": bool(ctx.inputs.get("completions"))},
            outputs={"data": "data.jsonl", "completions": "completions.jsonl"},
        )


def _earlier_samples(ctx: StageContext, prompts: list, samples: int) -> list:
    """The `completions` input's samples of `prompts` (their first `samples` responses), scores cleared.

    A prompt with no completion there is an error: rescoring must not silently shrink the data.
    """
    from posttrain.data.io import load_records
    from posttrain.data.records import Completion
    from posttrain.stages.artifacts import data_file

    files = [data_file(p, "completions.jsonl") for p in ctx.inputs_of("completions")]
    by_prompt = {c.prompt.id: c for c in load_records(files, Completion, ctx.quarantine, ctx.max_quarantine_share,
                                                      f"stage {ctx.stage_id}")}
    missing = [p.id for p in prompts if p.id not in by_prompt]
    if missing:
        raise ValueError(f"stage {ctx.stage_id}: {len(missing)} of {len(prompts)} prompts have no samples in "
                         f"`completions` (first: {missing[0]}); sample them, or select fewer prompts")
    chosen = []
    for prompt in prompts:
        completion = by_prompt[prompt.id]
        completion.responses = completion.responses[:samples]
        for response in completion.responses:
            response.score, response.reason = None, None
        chosen.append(completion)
    return chosen


def _scorer(ctx: StageContext, config: RejectionSamplingConfig):
    from posttrain.judge.factory import build_scorer
    from posttrain.stages.artifacts import model_dir
    from posttrain.stages.generate import HTTP_CACHE_DIR
    from posttrain.tinyworld.world import TinyWorldGrader

    def optional_model(name: str):
        paths = ctx.inputs_of(name, required=False)
        return model_dir(paths[0]) if paths else None

    return build_scorer(config.scorer, grader=TinyWorldGrader(), reward_model_path=optional_model("reward_model"),
                        judge_model_path=optional_model("judge_model"), cache_dir=ctx.out_dir / HTTP_CACHE_DIR,
                        seed=ctx.seed)


def _scored(response) -> bool:
    return response.score is not None and not math.isnan(response.score)


def _score(scorer, completions: list) -> None:
    """Fill every answered response's score and reason, in one batched call for the shard."""
    from posttrain.stages.generate import is_failed

    targets = [(c.prompt, r) for c in completions for r in c.responses if not is_failed(r)]
    if not targets:
        return
    scores = scorer.score([p for p, _ in targets], [r.messages for _, r in targets])
    for (_, response), score in zip(targets, scores):
        response.score, response.reason = score.value, score.reason


def _best_conversations(ctx: StageContext, completions: list, config: RejectionSamplingConfig):
    """The best-scored response of each prompt as a Conversation, when it reaches min_score (drops say why)."""
    from posttrain.data.records import Conversation, Message

    for c in completions:
        scored = [r for r in c.responses if _scored(r)]
        if not scored:
            ctx.dropped.add("unscored", detail="no scored response", row={"prompt": c.prompt.id})
            continue
        best = max(scored, key=lambda r: r.score)  # the first of equals: the lowest sample index
        if best.score < config.min_score:
            ctx.dropped.add("below_min_score", detail=f"best score {best.score:.3g} < {config.min_score:g}",
                            row={"prompt": c.prompt.id, "family": c.prompt.family})
            continue
        system = getattr(c.meta, "system_prompt", None) if config.keep_system_prompt else None
        head = [Message(role="system", content=system)] if system else []
        meta = {"stage": ctx.stage_id, "round": ctx.round, "seed": ctx.seed, "model": c.meta.models[best.index],  # type: ignore[attr-defined]
                "prompt_id": c.prompt.id, "family": c.prompt.family, "score": best.score,
                "pass_rate": c.meta.pass_rate, "response_index": best.index}  # type: ignore[attr-defined]
        try:
            yield Conversation(messages=head + c.prompt.messages + best.messages, tools=c.prompt.tools, meta=meta)
        except ValueError as err:  # e.g. a tool call left unanswered after the last tool round
            ctx.dropped.add("invalid_conversation", detail=str(err).splitlines()[0], row={"prompt": c.prompt.id})
