"""Stage `tinyworld_data`: the tiny world's SFT conversations (reference solutions) and held-out prompts."""
from __future__ import annotations

from pydantic import Field, field_validator

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult


class TinyWorldDataConfig(StageConfig):
    sft_per_family: int = Field(300, ge=1, description="reference-solution conversations per task family")
    eval_per_family: int = Field(200, ge=1, description="held-out evaluation prompts per task family")
    train_prompts_per_family: int | dict[str, int] = Field(
        0, description="extra train-split prompts (no answers) for sampling stages, one count for every family or "
                       "a count per family name (families left out get none); their reference answers go to "
                       "references.jsonl")
    noise: float = Field(0.0, ge=0.0, le=1.0, description="share of SFT references deliberately corrupted")

    @field_validator("train_prompts_per_family")
    @classmethod
    def _known_families(cls, counts: int | dict[str, int]) -> int | dict[str, int]:
        from posttrain.tinyworld.world import FAMILIES

        if isinstance(counts, dict) and set(counts) - set(FAMILIES):
            raise ValueError(f"unknown families {sorted(set(counts) - set(FAMILIES))} (known: {sorted(FAMILIES)})")
        if any(n < 0 for n in (counts.values() if isinstance(counts, dict) else [counts])):
            raise ValueError(f"counts must be >= 0, got {counts}")
        return counts

    def train_prompt_counts(self) -> dict[str, int]:
        """The number of train prompts per family name (0 for a family a mapping leaves out)."""
        from posttrain.tinyworld.world import FAMILIES

        counts = self.train_prompts_per_family
        return {name: counts.get(name, 0) if isinstance(counts, dict) else counts for name in FAMILIES}


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
        counts_per_family = config.train_prompt_counts()
        if any(counts_per_family.values()):
            prompts = [p for name, fam in world.FAMILIES.items() if counts_per_family[name]
                       for p in fam.generate_prompts("train", counts_per_family[name], ctx.seed + 1)]
            write_records(ctx.out_dir / "prompts.jsonl", prompts)
            write_records(ctx.out_dir / "references.jsonl", world.reference_conversations(prompts))
            outputs.update(prompts="prompts.jsonl", references="references.jsonl")
            counts["train_prompts"] = len(prompts)
        return StageResult(counts=counts, outputs=outputs)
