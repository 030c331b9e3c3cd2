"""Stage `judge`: label preference pairs with a pairwise LLM judge, or score completions with any scorer.

Pairs (input `pairs`): the judge is asked twice with the answers swapped; a pair is kept only when
both orders name the same winner (Nemotron-4), with chosen/rejected swapped when the judge prefers
the rejected one; the verdicts and the judge's reasons go into the pair's meta, the agreement rate
into the manifest. Completions (input `completions`): every response is scored by `scorer` (default:
1-10 grading by the judge) into its `score` (or `reward`), ready for `pairs`.
Work is cut into shards written as they finish, so a cut-off stage resumes where it stopped.
"""
from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from posttrain.generate.factory import BackendConfig
from posttrain.judge.factory import ScorerConfig
from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult

REASON_CHARS = 1000  # how much of each judge reply a pair keeps


class JudgeConfig(StageConfig):
    backend: BackendConfig = Field({"type": "hf"}, validate_default=True, description="the judge: {type: hf} (the model input) or {type: openai, base_url, model, api_key_env}")
    max_new_tokens: int = Field(512, ge=1, description="longest judge reply")
    scorer: ScorerConfig = Field({"type": "llm_judge"}, validate_default=True, description="scores completions' responses; an llm_judge without a backend uses `backend`")
    score_field: Literal["score", "reward"] = Field("score", description="where a completion response's score is written")
    shard_size: int = Field(64, ge=1, description="pairs or completions per shard (the unit of resume)")


class Judge(Stage):
    kind = "judge"
    version = 1
    Config = JudgeConfig
    inputs = {"pairs": False, "completions": False, "model": False, "reward_model": False}
    description = "Judge pairs with an LLM in both orders (kept when they agree), or score completions with a scorer."

    def run(self, config: JudgeConfig, ctx: StageContext) -> StageResult:
        pair_files = ctx.inputs_of("pairs", required=False)
        completion_files = ctx.inputs_of("completions", required=False)
        if not pair_files and not completion_files:
            raise ValueError(f"stage {ctx.stage_id!r}: bind `pairs` or `completions` (or both)")
        result = StageResult()
        if pair_files:
            _merge(result, _judge_pairs(ctx, config, pair_files))
        if completion_files:
            _merge(result, _score_completions(ctx, config, completion_files))
        return result


def _merge(into: StageResult, part: StageResult) -> None:
    for name, value in part.counts.items():
        into.counts[name] = into.counts.get(name, 0) + value
    into.metrics.update(part.metrics)
    into.outputs.update(part.outputs)


def _model_path(ctx: StageContext, name: str):
    from posttrain.stages.artifacts import model_dir

    paths = ctx.inputs_of(name, required=False)
    return model_dir(paths[0]) if paths else None


def _judge_backend(ctx: StageContext, config: JudgeConfig):
    from posttrain.generate.factory import build_chat_backend
    from posttrain.stages.generate import HTTP_CACHE_DIR

    if config.backend.type == "hf":
        from posttrain.models.runtime import set_cpu_threads

        set_cpu_threads()
    return build_chat_backend(config.backend, model_path=_model_path(ctx, "model"),
                              cache_dir=ctx.out_dir / HTTP_CACHE_DIR, max_tool_rounds=0)


# ---------------------------------------------------------------------------------------- pairs


def _judge_pairs(ctx: StageContext, config: JudgeConfig, paths: list) -> StageResult:
    from posttrain.data.io import load_records, write_records
    from posttrain.data.records import PreferencePair
    from posttrain.generate.base import SamplingParams
    from posttrain.generate.sharded import run_sharded
    from posttrain.judge.llm_judge import PairwiseJudge
    from posttrain.stages.artifacts import find_data_file

    files = [find_data_file(p, ["pairs.jsonl"]) for p in paths]
    pairs = load_records(files, PreferencePair, ctx.quarantine, ctx.max_quarantine_share, f"stage {ctx.stage_id}")
    judge = PairwiseJudge(_judge_backend(ctx, config), SamplingParams(max_new_tokens=config.max_new_tokens),
                          seed=ctx.seed)
    judged, _ = run_sharded(pairs, shard_size=config.shard_size, shard_dir=ctx.out_dir / "shards" / "pairs",
                            work=lambda shard, _: _annotate(judge, shard), record_cls=PreferencePair,
                            key_of_item=lambda p: p.id, key_of_record=lambda p: p.id, desc=f"{ctx.stage_id}: judging")
    labels = Counter(p.meta.judge["label"] for p in judged)  # type: ignore[attr-defined]
    kept = [pair for pair in (_verdict_pair(ctx, p) for p in judged) if pair is not None]
    write_records(ctx.out_dir / "pairs.jsonl", kept)
    agreed = labels["agree"] + labels["tie"]
    return StageResult(
        counts={"input_rows": len(pairs), "pairs": len(kept)},
        metrics={"agreement_rate": agreed / len(judged) if judged else 0.0, "verdicts": dict(sorted(labels.items())),
                 "swapped": sum(bool(getattr(p.meta, "judge_swapped", False)) for p in kept), "judge": judge.backend.name},
        outputs={"pairs": "pairs.jsonl"},
    )


def _annotate(judge, pairs: list) -> list:
    """Each pair with the judge's two verdicts in meta.judge (the pair itself unchanged)."""
    verdicts = judge.judge([p.prompt for p in pairs], [p.chosen for p in pairs], [p.rejected for p in pairs])
    for pair, verdict in zip(pairs, verdicts):
        pair.meta.judge = {"label": verdict.label, "winner": verdict.winner, "forward": verdict.forward,  # type: ignore[attr-defined]
                           "backward": verdict.backward, "reasons": [r[-REASON_CHARS:] for r in verdict.reasons],
                           "model": judge.backend.name}
    return pairs


def _verdict_pair(ctx: StageContext, pair):
    """The pair as the judge orders it when both orders agree on a winner; else dropped with the reason."""
    verdict = pair.meta.judge
    if verdict["label"] != "agree":
        ctx.dropped.add(f"judge_{verdict['label']}", detail=f"forward {verdict['forward']}, swapped {verdict['backward']}",
                        row={"pair": pair.id})
        return None
    if verdict["winner"] == "first":
        return pair
    swapped = pair.model_copy(update={
        "chosen": pair.rejected, "rejected": pair.chosen, "chosen_score": pair.rejected_score,
        "rejected_score": pair.chosen_score, "chosen_reward": pair.rejected_reward,
        "rejected_reward": pair.chosen_reward, "strength": None, "id": ""})
    swapped = type(pair).model_validate(swapped.model_dump())  # recompute the id of the new content
    swapped.meta.judge_swapped = True  # type: ignore[attr-defined]
    return swapped


# ---------------------------------------------------------------------------------------- completions


def _score_completions(ctx: StageContext, config: JudgeConfig, paths: list) -> StageResult:
    from posttrain.data.io import load_records, write_records
    from posttrain.data.records import Completion
    from posttrain.generate.sharded import run_sharded
    from posttrain.stages.artifacts import find_data_file

    files = [find_data_file(p, ["completions.jsonl"]) for p in paths]
    completions = load_records(files, Completion, ctx.quarantine, ctx.max_quarantine_share, f"stage {ctx.stage_id}")
    scorer = _scorer(ctx, config)
    scored, _ = run_sharded(completions, shard_size=config.shard_size,
                            shard_dir=ctx.out_dir / "shards" / "completions",
                            work=lambda shard, _: _score_shard(scorer, shard, config.score_field),
                            record_cls=Completion, key_of_item=lambda c: c.id, key_of_record=lambda c: c.id,
                            desc=f"{ctx.stage_id}: scoring")
    write_records(ctx.out_dir / "completions.jsonl", scored)
    values = [getattr(r, config.score_field) for c in scored for r in c.responses]
    unscored = sum(v is None or v != v for v in values)  # NaN: the judge gave no grade
    return StageResult(counts={"input_rows": len(completions), "scored_responses": len(values) - unscored,
                               "unscored_responses": unscored},
                       metrics={"scorer": scorer.name}, outputs={"completions": "completions.jsonl"})


def _scorer(ctx: StageContext, config: JudgeConfig):
    from posttrain.judge.factory import build_scorer, scorer_specs
    from posttrain.stages.generate import HTTP_CACHE_DIR
    from posttrain.tinyworld.world import TinyWorldGrader

    specs = [s if s.type != "llm_judge" or s.backend else s.model_copy(update={"backend": config.backend})
             for s in scorer_specs(config.scorer)]
    return build_scorer([s.model_dump() for s in specs], grader=TinyWorldGrader(),
                        reward_model_path=_model_path(ctx, "reward_model"), judge_model_path=_model_path(ctx, "model"),
                        cache_dir=ctx.out_dir / HTTP_CACHE_DIR, seed=ctx.seed)


def _score_shard(scorer, completions: list, field: str) -> list:
    targets = [(c.prompt, r) for c in completions for r in c.responses if r.messages]
    scores = scorer.score([p for p, _ in targets], [r.messages for _, r in targets]) if targets else []
    for (_, response), score in zip(targets, scores):
        setattr(response, field, score.value)
        response.reason = score.reason
    return completions
