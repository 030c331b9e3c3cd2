"""Stage `merge`: merge fine-tuned models (and optionally their base) into one HF model, tensor by tensor.

Llama 3 averages checkpoints at its RM, SFT and DPO stages; Gemma 2 merges RL runs with WARP;
Baichuan 2 merges per-domain models with Model Stock. The report compares the merged model with
its members through `evaluate` stages on each of them (see recipes/merge-example.yaml).
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import AliasChoices, Field

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult

MethodName = Literal["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "model_stock", "warp"]


class MergeConfig(StageConfig):
    method: MethodName = Field("linear", description="merge method; task-vector methods need the `base` input")
    weights: list[float] | None = Field(None, description="one weight per model, in input order; default equal")
    density: float = Field(1.0, gt=0.0, le=1.0, description="TIES / DARE: fraction of each task vector kept")
    scale: float = Field(1.0, validation_alias=AliasChoices("scale", "lambda"),
                         description="lambda (also accepted as `lambda`): multiplies the merged task vector")
    t: float = Field(0.5, ge=0.0, le=1.0, description="SLERP position: 0 the first model, 1 the second")
    eta: float = Field(1.0, ge=0.0, le=1.0, description="WARP: interpolation from the base (0) to the SLERP merge (1)")
    seed: int | None = Field(None, description="DARE's drop masks; default the stage seed")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="output dtype of floating tensors; default the first model's")
    tokenizer_source: Union[Literal["first", "base"], int] = Field(
        "first", description="tokenizer, chat template and generation config from: first, base, or a model index")
    max_shard_gb: float = Field(5.0, gt=0.0, description="output shard size before a new shard starts (GiB)")


class Merge(Stage):
    kind = "merge"
    version = 1
    Config = MergeConfig
    inputs = {"models": True, "base": False}
    description = "Merge models (linear, task arithmetic, TIES, DARE, SLERP, Model Stock, WARP), streaming per tensor."

    def run(self, config: MergeConfig, ctx: StageContext) -> StageResult:
        from posttrain.merge.methods import METHODS, MergeParams
        from posttrain.merge.streaming import merge_checkpoints
        from posttrain.stages.artifacts import MODEL_DIR, model_dir

        models = [model_dir(path) for path in ctx.inputs_of("models")]
        bases = ctx.inputs_of("base", required=False)
        base = ctx.input("base") if bases else None
        params = MergeParams(
            weights=tuple(config.weights) if config.weights is not None else None, density=config.density,
            scale=config.scale, t=config.t, eta=config.eta, seed=ctx.seed if config.seed is None else config.seed,
        )
        summary = merge_checkpoints(
            models, ctx.out_dir / MODEL_DIR, config.method, params, base=model_dir(base) if base else None,
            dtype=config.dtype, tokenizer_source=config.tokenizer_source,
            max_shard_bytes=int(config.max_shard_gb * 1024**3),
        )
        used = {name: getattr(params, name) for name in METHODS[config.method].params}
        ctx.log_metrics({"merge/seconds": round(summary.seconds, 2), "merge/warnings": len(summary.warnings)})
        return StageResult(
            counts={"models": len(models), "tensors": summary.tensors, "merged_tensors": summary.merged_tensors,
                    "copied_tensors": summary.copied_tensors, "parameters": summary.parameters},
            metrics={"method": config.method, "params": used, "members": [str(m) for m in models],
                     "base": str(model_dir(base)) if base else None, "dtype": summary.dtype,
                     "tokenizer_source": summary.tokenizer_source, "shards": summary.shards,
                     "bytes_written": summary.bytes_written, "merge_seconds": round(summary.seconds, 2),
                     "warnings": len(summary.warnings), "warning_examples": summary.warnings[:5]},
            outputs={"model": MODEL_DIR},
        )
