"""Stage `tinyworld_data`: the tiny world's SFT conversations (reference solutions) and held-out prompts."""
from __future__ import annotations

from pydantic import Field

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult


class TinyWorldDataConfig(StageConfig):
    sft_per_family: int = Field(300, ge=1, description="reference-solution conversations per task family")
    eval_per_family: int = Field(200, ge=1, description="held-out evaluation prompts per task family")
    train_prompts_per_family: int = Field(
        0, ge=0, description="extra train-split prompts (no answers) for sampling stages; their reference answers go to references.jsonl")
    noise: float = Field(0.0, ge=0.0, le=1.0, description="share of SFT references deliberately corrupted")


class TinyWorldData(Stage):
    kind = "tinyworld_data"
    version = 2
    Config = TinyWorldDataConfig
    description = ("Write the tiny world's SFT conversations (sft.jsonl), eval prompts (eval.jsonl), train prompts "
                   "(prompts.jsonl) and those prompts answered by their references (references.jsonl).")

    def run(self, config: TinyWorldDataConfig, ctx: StageContext) -> StageResult:
        from posttrain.data.io import write_records
        from posttrain.tinyworld import world

        sft = world.sft_conversations(config.sft_per_family, ctx.seed, noise=config.noise)
        evals = world.eval_prompts(config.eval_per_family, ctx.seed)
        write_records(ctx.out_dir / "sft.jsonl", sft)
        write_records(ctx.out_dir / "eval.jsonl", evals)
        outputs = {"sft": "sft.jsonl", "eval": "eval.jsonl"}
        counts = {"sft_conversations": len(sft), "eval_prompts": len(evals)}
        if config.train_prompts_per_family:
            prompts = [p for fam in world.FAMILIES.values()
                       for p in fam.generate_prompts("train", config.train_prompts_per_family, ctx.seed + 1)]
            write_records(ctx.out_dir / "prompts.jsonl", prompts)
            write_records(ctx.out_dir / "references.jsonl", world.reference_conversations(prompts))
            outputs.update(prompts="prompts.jsonl", references="references.jsonl")
            counts["train_prompts"] = len(prompts)
        return StageResult(counts=counts, outputs=outputs)
