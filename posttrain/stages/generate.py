"""Stage `generate`: K sampled responses per prompt from one backend, as Completion records.

Also the sampling machinery `rejection_sampling` shares: reading prompts, building the backends
(one per model input for `hf`, or an HTTP server), per-family system prompts, and the sharded,
resumable loop. Each prompt's samples are seeded from (run seed, prompt id, model index), and
prompts are cut into shards of fixed composition written as they finish (shards/shard-00003.jsonl),
so a stage killed and restarted writes exactly what an uncut run writes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import Field

from posttrain.generate.base import SamplingParams
from posttrain.generate.factory import BackendConfig
from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult

SHARD_DIR = "shards"
HTTP_CACHE_DIR = "http_cache"


class SamplingConfig(StageConfig):
    """What the sampling stages share."""

    samples: int = Field(4, ge=1, description="responses sampled per prompt (K)")
    temperature: float = Field(1.0, ge=0.0, description="sampling temperature; 0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass (Baichuan 2: 0.99)")
    top_k: int = Field(0, ge=0, description="sample among the k most likely tokens; 0 = all (Baichuan 2: 50)")
    max_new_tokens: int = Field(128, ge=1, description="most tokens per reply")
    max_tool_rounds: int = Field(2, ge=0, description="tool calls answered before the final reply")
    tools: Literal["tinyworld", "none"] = Field("tinyworld", description="who answers tool calls: the tiny world's tools, or nobody")
    system_prompts: dict[str, str] = Field(default_factory=dict, description="family -> system prompt added while sampling ('*' = any family); a prompt's own system message wins")
    prompt_files: list[str] = Field(["prompts.jsonl"], description="file names looked up in prompt artifacts")
    max_prompts_per_family: int | None = Field(None, ge=1, description="use only the first N prompts of each family")
    shard_size: int = Field(64, ge=1, description="prompts per shard (the unit of resume)")
    keep_token_ids: bool = Field(False, description="store each response's token ids and log-probs")

    def params(self, seed: int | None = None) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, n=self.samples, seed=seed)


class GenerateConfig(SamplingConfig):
    backend: BackendConfig = Field({"type": "hf"}, validate_default=True, description="who answers: {type: hf} (the model input) or {type: openai, base_url, model, api_key_env}")


@dataclass
class Member:
    """One model of the sampling committee and how many of the K samples it draws."""

    backend: Any  # a ChatBackend
    samples: int


# ---------------------------------------------------------------------------------------- shared helpers


def load_prompts(ctx: StageContext, config: SamplingConfig) -> list:
    """The prompts of every `prompts` input (quarantine for bad rows), limited per family if asked."""
    from posttrain.data.io import load_records
    from posttrain.data.records import Prompt, first_per_family
    from posttrain.stages.artifacts import find_data_file

    files = [find_data_file(p, config.prompt_files) for p in ctx.inputs_of("prompts")]
    prompts = load_records(files, Prompt, ctx.quarantine, ctx.max_quarantine_share, f"stage {ctx.stage_id}")
    return first_per_family(prompts, config.max_prompts_per_family)


def tool_hook_for(config: SamplingConfig):
    if config.tools == "none":
        return None
    from posttrain.tinyworld.world import execute_tool_call

    return execute_tool_call


def build_members(ctx: StageContext, backends: list[BackendConfig], config: SamplingConfig) -> list[Member]:
    """The committee: an `hf` entry serves every `model` input artifact; any other entry is one member.
    The K samples are split across the members as evenly as possible, the first ones drawing the extra."""
    from posttrain.generate.factory import build_chat_backend
    from posttrain.stages.artifacts import model_dir

    hook, built = tool_hook_for(config), []
    for spec in backends:
        if spec.type == "hf":
            from posttrain.models.runtime import set_cpu_threads

            set_cpu_threads()
        local = [model_dir(p) for p in ctx.inputs_of("model", required=spec.type == "hf")]
        for path in local if spec.type != "openai" and local else [None]:
            built.append(build_chat_backend(spec, model_path=path, cache_dir=ctx.out_dir / HTTP_CACHE_DIR,
                                            tool_hook=hook, max_tool_rounds=config.max_tool_rounds))
    if not built:
        raise ValueError(f"stage {ctx.stage_id!r}: no model to sample from")
    if len(built) > config.samples:
        raise ValueError(f"stage {ctx.stage_id!r}: {len(built)} models but only {config.samples} samples per prompt")
    share, extra = divmod(config.samples, len(built))
    return [Member(backend, share + (1 if m < extra else 0)) for m, backend in enumerate(built)]


def with_system_prompt(prompt, system_prompts: dict[str, str]) -> tuple[list, str | None]:
    """The messages to sample with, and the system prompt added (None when none was)."""
    from posttrain.data.records import Message

    text = system_prompts.get(prompt.family or "", system_prompts.get("*"))
    if text is None or prompt.messages[0].role == "system":
        return prompt.messages, None
    return [Message(role="system", content=text), *prompt.messages], text


def sample_shard(members: list[Member], prompts: list, config: SamplingConfig, run_seed: int,
                 score: Callable[[list], None] | None = None) -> list:
    """One Completion per prompt with K responses (member 0's first); `score(completions)` fills scores."""
    from posttrain.data.records import Completion
    from posttrain.generate.sharded import sample_seed

    sampled = [with_system_prompt(p, config.system_prompts) for p in prompts]
    conversations = [(messages, p.tools) for p, (messages, _) in zip(prompts, sampled)]
    responses: list[list] = [[] for _ in prompts]
    models: list[list[str]] = [[] for _ in prompts]
    for m, member in enumerate(members):
        seeds = [sample_seed(run_seed, p.id, m) for p in prompts]
        params = config.params().model_copy(update={"n": member.samples})
        for i, samples in enumerate(member.backend.chat(conversations, params, seeds=seeds)):
            for sample in samples:
                responses[i].append(_response(sample, len(responses[i]), config.keep_token_ids))
                models[i].append(sample.model or member.backend.name)
    completions = []
    for p, (_, system), rs, ms, in zip(prompts, sampled, responses, models):
        meta = {"seed": run_seed, "models": ms, **({"system_prompt": system} if system else {})}
        completions.append(Completion(prompt=p, responses=rs, meta=meta))
    if score is not None:
        score(completions)
    return completions


def _response(sample, index: int, keep_token_ids: bool):
    from posttrain.data.records import Response

    failure = getattr(sample, "error", "")
    reason = f"{failure}: {getattr(sample, 'detail', '')}" if failure else None
    tokens = {"token_ids": sample.token_ids, "logprobs": sample.logprobs} if keep_token_ids else {}
    return Response(index=index, messages=list(sample.messages), finish_reason=sample.finish_reason,
                    reason=reason, **tokens)


def is_failed(response) -> bool:
    """A sample the backend could not produce (an HTTP request that stayed unanswered)."""
    return response.finish_reason == "error" or not response.messages


def sample_prompts(ctx: StageContext, prompts: list, members: list[Member], config: SamplingConfig,
                   score: Callable[[list], None] | None = None) -> tuple[list, dict[str, int]]:
    """Completions for every prompt through resumable shards, without the samples the backend failed to produce."""
    from posttrain.data.records import Completion
    from posttrain.generate.sharded import run_sharded

    completions, stats = run_sharded(
        prompts, shard_size=config.shard_size, shard_dir=ctx.out_dir / SHARD_DIR,
        work=lambda shard, _: sample_shard(members, shard, config, ctx.seed, score), record_cls=Completion,
        key_of_item=lambda p: p.id, key_of_record=lambda c: c.prompt.id,
        keep_shard=lambda records: not any(is_failed(r) for c in records for r in c.responses),
        desc=f"{ctx.stage_id}: sampling")
    completions = [c for c in (_without_failures(ctx, c) for c in completions) if c is not None]
    for c in completions:
        c.meta.stage, c.meta.round = ctx.stage_id, ctx.round
    return completions, {"shards": stats.shards, "shards_reused": stats.reused}


def _without_failures(ctx: StageContext, completion):
    """The completion without the samples the backend could not produce, or None when it produced none.

    A prompt with no answered sample is quarantined (an input row that could not be processed); a
    prompt that lost some of its samples keeps the rest, and each lost one is logged as dropped.
    """
    failed = [r for r in completion.responses if is_failed(r)]
    if not failed:
        return completion
    reason, _, detail = (failed[0].reason or "no_answer: ").partition(": ")
    if len(failed) == len(completion.responses):
        ctx.quarantine.add(reason or "no_answer", field="responses",
                           detail=f"all {len(failed)} samples failed; {detail}", row={"prompt": completion.prompt.id})
        return None
    for r in failed:
        ctx.dropped.add("sample_failed", field=f"responses.{r.index}", detail=r.reason,
                        row={"prompt": completion.prompt.id, "index": r.index})
    return completion.model_copy(update={"responses": [r for r in completion.responses if not is_failed(r)]})


def remove_shards(ctx: StageContext) -> None:
    """The shards are the resume cache; once the outputs are written they are only duplicates."""
    import shutil

    shutil.rmtree(ctx.out_dir / SHARD_DIR, ignore_errors=True)


# ---------------------------------------------------------------------------------------- the stage


class Generate(Stage):
    kind = "generate"
    version = 1
    Config = GenerateConfig
    inputs = {"prompts": True, "model": False}
    description = "Sample K responses per prompt (hf model or OpenAI-compatible server) into completions.jsonl; resumable by shard."

    def run(self, config: GenerateConfig, ctx: StageContext) -> StageResult:
        from posttrain.data.io import write_records

        prompts = load_prompts(ctx, config)
        members = build_members(ctx, [config.backend], config)
        completions, shard_counts = sample_prompts(ctx, prompts, members, config)
        write_records(ctx.out_dir / "completions.jsonl", completions)
        remove_shards(ctx)
        responses = sum(len(c.responses) for c in completions)
        return StageResult(
            counts={"input_rows": len(prompts), "completions": len(completions), "responses": responses, **shard_counts},
            metrics={"models": [m.backend.name for m in members],
                     "mean_response_chars": round(sum(len(r.text) for c in completions for r in c.responses)
                                                  / max(responses, 1), 1)},
            outputs={"completions": "completions.jsonl"},
        )
