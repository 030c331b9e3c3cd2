"""Stage `pairs`: preference pairs (prompt, chosen, rejected) from scored completions.

Reads the completions of `rejection_sampling`, `judge` or `generate` (scored), picks pairs with a
strategy, drops near-identical ones (ROUGE-L) and those with too small a score gap, each drop with
its reason in dropped.jsonl, and writes pairs.jsonl with both scores and a preference strength.
An optional `references` input (conversations: a prompt and its reference answer, e.g. the tiny
world's references.jsonl) joins each matching prompt's responses with `reference_score`, so prompts
whose samples all fail pair the reference against their worst sample.
With `perturb: K`, each prompt's first passing sample (first `perturb_responses`) is also paired
against up to K small edits of it that the grader fails (`posttrain.synth.perturb`: a word's case, a comma, a number, a dropped
sentence, a swapped word or answer, quotes, bullets): pairs that differ in one graded fault; with
`perturb_repair`, failing responses are also edited until they pass, and the two directions balanced.
Those pairs skip the ROUGE-L filter (their near-identity is the point) and carry
`meta.strategy: perturbed`.
"""
from __future__ import annotations

from collections import Counter
from typing import Literal

from pydantic import Field

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult


class PairsConfig(StageConfig):
    strategy: Literal["best_vs_worst", "best_vs_random_lower", "all_ranked_pairs"] = Field(
        "best_vs_worst", description="which responses of a prompt are paired")
    rank_by: Literal["score", "reward"] = Field("score", description="rank responses by grader/judge score or by reward")
    min_gap: float = Field(0.0, ge=0.0, description="drop pairs whose chosen-rejected gap is below this (equal scores never pair)")
    max_similarity: float = Field(0.9, ge=0.0, le=1.0, description="drop pairs whose two answers have ROUGE-L F above this")
    strength_gaps: tuple[float, float, float] = Field(
        (0.75, 0.5, 0.25), description="smallest gaps for significantly better / better / slightly better; below: negligibly better")
    balance_tags: list[str] = Field(default_factory=list, description="within a family, cap each of these prompt tags' pairs at the rarest one's count (e.g. [unsafe, safe_lookalike])")
    completion_files: list[str] = Field(["completions.jsonl"], description="file names looked up in completion artifacts")
    reference_score: float = Field(1.0, description="the score a reference answer (`references` input) ranks with")
    reference_files: list[str] = Field(["references.jsonl", "data.jsonl"],
                                       description="file names looked up in reference artifacts")
    perturb: int = Field(0, ge=0, description="per response perturbed, up to this many small edits of it that the grader "
                                              "judges otherwise, each paired with it (0 = none)")
    perturb_responses: int = Field(1, ge=1, description="passing (and, with perturb_repair, failing) responses "
                                                        "perturbed per prompt")
    perturb_repair: bool = Field(False, description="also edit failing responses until they pass, and balance the two "
                                                    "directions per family and edit kind")
    perturb_edits: list[str] | None = Field(None, description="edit kinds to try (None = all; see posttrain.synth.perturb)")
    grader: Literal["tinyworld"] = Field("tinyworld", description="grades the edits of `perturb`")


class Pairs(Stage):
    kind = "pairs"
    version = 2
    Config = PairsConfig
    inputs = {"completions": True, "references": False}
    description = "Build preference pairs from scored completions (strategy, ROUGE-L and gap filters, strength)."

    def run(self, config: PairsConfig, ctx: StageContext) -> StageResult:
        from posttrain.curate.pairs import PairOptions, balance_tags, build_pairs, reference_answers, with_references
        from posttrain.data.io import load_records, write_records
        from posttrain.data.records import Completion, Conversation
        from posttrain.stages.artifacts import find_data_file

        where = f"stage {ctx.stage_id}"
        files = [find_data_file(p, config.completion_files) for p in ctx.inputs_of("completions")]
        completions = load_records(files, Completion, ctx.quarantine, ctx.max_quarantine_share, where)
        sampled = completions
        counts, reference_ids = {"input_rows": len(completions)}, set()
        reference_paths = ctx.inputs_of("references", required=False)
        if reference_paths:
            if config.rank_by != "score":
                raise ValueError(f"{where}: references rank by score; rank_by is {config.rank_by!r}")
            files = [find_data_file(p, config.reference_files) for p in reference_paths]
            references = load_records(files, Conversation, ctx.quarantine, ctx.max_quarantine_share, where)
            completions, reference_ids = with_references(completions, reference_answers(references),
                                                         config.reference_score)
            counts.update(input_rows=len(completions) + len(references), references=len(references),
                          prompts_with_reference=len(reference_ids))
        options = PairOptions(strategy=config.strategy, rank_by=config.rank_by, min_gap=config.min_gap,
                              max_similarity=config.max_similarity, strength_gaps=config.strength_gaps, seed=ctx.seed)
        on_drop = lambda reason, detail, row: ctx.dropped.add(reason, detail=detail, row=row)  # noqa: E731
        pairs = list(build_pairs(completions, options, on_drop))
        if config.perturb:
            pairs += _perturbed(sampled, config, ctx.seed)
        for pair in pairs:
            pair.meta.stage, pair.meta.round = ctx.stage_id, ctx.round
        if config.balance_tags:
            pairs = balance_tags(pairs, config.balance_tags, ctx.seed, on_drop)
        write_records(ctx.out_dir / "pairs.jsonl", pairs)
        strengths = Counter(p.strength for p in pairs)
        families = Counter(p.prompt.family or "unknown" for p in pairs)
        from_reference = Counter(p.prompt.family or "unknown" for p in pairs
                                 if getattr(p.meta, "chosen_id", None) in reference_ids)
        gaps = [p.meta.gap for p in pairs]  # type: ignore[attr-defined]
        edits = Counter(f"{p.meta.direction}/{p.meta.edit}" for p in pairs  # type: ignore[attr-defined]
                        if getattr(p.meta, "strategy", None) == "perturbed")
        return StageResult(
            counts={**counts, "pairs": len(pairs)},
            metrics={"strengths": dict(sorted(strengths.items())), "families": dict(sorted(families.items())),
                     "reference_chosen": dict(sorted(from_reference.items())),
                     "perturbed": dict(sorted(edits.items())),
                     "mean_gap": sum(gaps) / len(gaps) if gaps else 0.0},
            outputs={"pairs": "pairs.jsonl"},
        )


def _perturbed(completions, config: PairsConfig, seed: int) -> list:
    """The minimal-edit pairs of `perturb` (sampled responses only: a reference answer is not perturbed)."""
    from posttrain.synth.perturb import EDITS, perturbed_pairs
    from posttrain.tinyworld.world import TinyWorldGrader

    return perturbed_pairs(completions, TinyWorldGrader(), per_response=config.perturb,
                           responses_per_prompt=config.perturb_responses, repair=config.perturb_repair,
                           edits=config.perturb_edits or tuple(EDITS), seed=seed)
