"""Stage `evaluate`: greedy answers on held-out prompts, graded per family with 95% intervals."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult


class EvaluateConfig(StageConfig):
    grader: Literal["tinyworld"] = Field("tinyworld", description="which graders score the answers")
    max_prompts_per_family: int | None = Field(None, ge=1, description="evaluate only the first N prompts of each family")
    max_new_tokens: int = Field(96, ge=1, description="most tokens per answer")
    batch_size: int = Field(64, ge=1, description="prompts decoded together")
    max_tool_rounds: int = Field(2, ge=0, description="tool calls executed and answered before the final reply")
    report_tags: list[str] = Field(["unsafe", "safe_lookalike"],
                                   description="prompt tags scored separately (safety: under- vs over-refusal)")


class Evaluate(Stage):
    kind = "evaluate"
    version = 1
    Config = EvaluateConfig
    inputs = {"model": True, "prompts": True, "baseline": False}
    description = ("Evaluate a model on held-out prompts; per-family scores with Wilson intervals and failures; "
                   "with a `baseline` evaluation, the paired per-prompt difference against it.")

    def run(self, config: EvaluateConfig, ctx: StageContext) -> StageResult:
        from posttrain.data.chat_templates import detect_template, end_of_turn_ids
        from posttrain.data.io import load_records, write_records
        from posttrain.data.records import Prompt, first_per_family
        from posttrain.evaluate.run import evaluate_prompts
        from posttrain.generate.base import SamplingParams
        from posttrain.generate.hf import HFGenerator
        from posttrain.models.loading import load_causal_lm
        from posttrain.models.runtime import set_cpu_threads
        from posttrain.stages.artifacts import data_file, model_dir
        from posttrain.tinyworld.world import TinyWorldGrader, execute_tool_call

        set_cpu_threads()
        path = model_dir(ctx.input("model"))
        model, tokenizer = load_causal_lm(path)
        template = detect_template(tokenizer)
        prompts = load_records([data_file(p, "eval.jsonl") for p in ctx.inputs_of("prompts")], Prompt,
                               ctx.quarantine, ctx.max_quarantine_share, f"stage {ctx.stage_id}")
        prompts = first_per_family(prompts, config.max_prompts_per_family)
        generator = HFGenerator(model, tokenizer, batch_size=config.batch_size,
                                eos_token_ids=end_of_turn_ids(tokenizer, template), model_name=str(path))
        result = evaluate_prompts(generator, tokenizer, prompts, TinyWorldGrader(), template=template,
                                  params=SamplingParams(max_new_tokens=config.max_new_tokens),
                                  tool_hook=execute_tool_call, model_name=str(path))
        write_records(ctx.out_dir / "completions.jsonl", result.completions)
        scores = {name: s.as_dict() for name, s in result.scores.items()}
        ctx.log_metrics({f"score/{name}": s["score"] for name, s in scores.items()})
        metrics = {"scores": scores, "tag_rates": {k: v.as_dict() for k, v in result.tag_rates.items()
                                                   if k.split("/", 1)[-1] in config.report_tags},
                   "examples": result.failures, "model": str(path)}
        if ctx.inputs.get("baseline"):
            metrics["paired"] = _paired(result.completions, ctx)
        return StageResult(counts={"input_rows": len(prompts), "evaluated": len(result.completions)},
                           metrics=metrics, outputs={"completions": "completions.jsonl"})


def _greedy_scores(completions) -> dict[str, tuple[str, float]]:
    """prompt id -> (family, score of the one greedy answer)."""
    return {c.prompt.id: (c.prompt.family or "unknown", c.responses[0].score) for c in completions}


def _paired(completions, ctx: StageContext) -> dict:
    """The paired difference of these answers' scores against the `baseline` evaluation's."""
    from posttrain.data.io import load_records
    from posttrain.data.records import Completion
    from posttrain.evaluate.paired import paired_difference
    from posttrain.stages.artifacts import data_file

    baseline = ctx.input("baseline")
    rows = load_records([data_file(baseline, "completions.jsonl")], Completion, ctx.quarantine,
                        ctx.max_quarantine_share, f"stage {ctx.stage_id} baseline")
    return {"baseline": baseline.name, "families": paired_difference(_greedy_scores(completions), _greedy_scores(rows))}
