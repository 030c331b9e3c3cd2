"""Stage `reward_model`: train a reward model on preference pairs and scored samples, then measure how it ranks.

Inputs: `model` (the backbone: usually the SFT model), `pairs` (PreferencePair rows: chosen, rejected,
optional edited answer, strength, absolute scores, attributes) and/or `scored` (Completion rows whose
responses carry absolute scores: every pair of different scores is trained, and the scores feed the
pointwise regulariser). Pairs whose two answers are near-identical (ROUGE-L F at or above
`similarity_threshold`, as Llama 3 filters them) are dropped before training and logged; minimal-edit
pairs (`meta.strategy: perturbed`, from the `pairs` stage's `perturb`) are kept, their near-identity
being the point.

With `policy` and `prompts` bound, the trained model is evaluated: `eval.samples` replies per held-out
prompt from the policy, graded by the tiny world's graders; pairwise accuracy on (passing, failing)
pairs per family and per RewardBench category, and best-of-N gain for each N in `eval.ns`. Bound to
other reward model directories, `ensemble` adds the same measures for the sum of this model and those,
each normalised by the mean and std of its reward over its training responses (the stage records them
in the saved config: `normalize` in the reward-model scorer uses them).
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from posttrain.stages.base import Stage, StageConfig, StageContext, StageResult
from posttrain.train.config import TrainConfig

Strength = Literal["significantly_better", "better", "slightly_better", "negligibly_better"]

# Head presets: output names and the weights that combine them into one reward.
HEAD_PRESETS: dict[str, tuple[list[str], list[float]]] = {
    "scalar": (["reward"], [1.0]),
    # Nemotron-4 340B Reward / HelpSteer2 (Wang et al. 2024).
    "helpsteer2": (["helpfulness", "correctness", "coherence", "complexity", "verbosity"],
                   [0.3, 0.74, 0.46, 0.47, -0.33]),
    # AFM (Apple 2024): the reward beside single-sided grading outputs that weigh 0 at inference.
    "afm": (["reward", "instruction_following", "conciseness", "truthfulness", "harmlessness"],
            [1.0, 0.0, 0.0, 0.0, 0.0]),
}

# The tiny world's families in RewardBench's four categories.
REWARDBENCH_CATEGORIES = {
    "steerability": "chat", "multi_turn": "chat_hard", "instruction_following": "chat_hard",
    "safety": "safety", "math": "reasoning", "tool_use": "reasoning",
}


class RewardEvalConfig(StageConfig):
    prompts_per_family: int = Field(50, ge=1, description="held-out prompts per family")
    samples: int = Field(16, ge=1, description="replies sampled per prompt from the policy")
    ns: list[int] = Field([1, 4, 16], description="best-of-N sizes (each divides `samples`)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature of the policy (the tiny SFT model's "
                                                      "samples at 1.0 almost never pass)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(96, ge=1, description="most tokens per reply")
    pairs_per_prompt: int = Field(4, ge=1, description="most (passing, failing) pairs drawn per prompt")
    greedy: bool = Field(True, description="also compare the pick with the policy's greedy reply")
    batch_size: int = Field(128, ge=1, description="sequences decoded together")

    @model_validator(mode="after")
    def _ns_divide_samples(self) -> "RewardEvalConfig":
        bad = [n for n in self.ns if n < 1 or n > self.samples]
        if bad:
            raise ValueError(f"ns {bad} must lie in [1, samples={self.samples}]")
        return self


class RewardModelConfig(TrainConfig):
    """TrainConfig plus the reward loss, its constants, the head and the data policy.

    The constant defaults are those of `posttrain.losses.reward` (a test keeps them equal).
    """

    loss: Literal["bradley_terry", "margin", "soft_label", "attributes"] = Field(
        "bradley_terry", description="objective: bradley_terry (Llama 3), margin (Llama 2), soft_label (AFM), "
                                     "attributes (HelpSteer2 regression)")
    margins: list[float] = Field([1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0], min_length=4, max_length=4,
                                 description="margin per strength level, strongest first (Llama 2 'margin small')")
    soft_labels: list[float] = Field([0.95, 0.85, 0.75, 0.65], min_length=4, max_length=4,
                                     description="target P(chosen wins) per strength level, strongest first (AFM form)")
    pointwise_alpha: float = Field(0.0, ge=0, description="Baichuan 2 pointwise MSE weight (0 for rows without scores)")
    score_normalisation: Literal["range", "zscore", "none"] = Field(
        "range", description="absolute scores: range maps score_range to [-1, 1]; zscore over the data; none")
    score_range: tuple[float, float] = Field((0.0, 1.0), description="(low, high) of absolute scores for `range`")
    centering_coef: float = Field(0.01, ge=0, description="reward centering weight on (r+ + r-)^2 (Eisenstein 2023)")
    grading_coef: float = Field(1.0, ge=0, description="AFM single-sided grading regulariser weight (head outputs "
                                                       "with targets)")
    lm_coef: float = Field(0.0, ge=0, description="GRM (Yang et al. 2024): weight of the language-modelling loss on "
                                                  "the preferred responses, through the tied embeddings (0 = off)")
    head: Literal["scalar", "helpsteer2", "afm"] = Field("scalar", description="head preset: outputs and weights")
    head_outputs: list[str] | None = Field(None, description="override the preset's output names")
    head_weights: list[float] | None = Field(None, description="override the preset's combination weights")
    use_edited: bool = Field(True, description="train edited > chosen > rejected (all ordered pairs) when edited exists")
    edited_strength: Strength | None = Field("better", description="strength of the edited answer over chosen")
    similarity_threshold: float | None = Field(
        0.9, ge=0, le=1, description="drop pairs whose answers have ROUGE-L F >= this (None = keep all)")
    max_tokens: int = Field(512, ge=8, description="longest prompt + response (tokens); longer ones follow on_overflow")
    on_overflow: Literal["truncate_left", "drop"] = Field(
        "truncate_left", description="too-long sequences: keep their last max_tokens tokens (scorers do the same), "
                                     "or drop the group (logged)")
    pair_files: list[str] = Field(["pairs.jsonl", "data.jsonl"], description="file names looked up in `pairs` inputs")
    scored_files: list[str] = Field(["completions.jsonl", "samples.jsonl", "data.jsonl"],
                                    description="file names looked up in `scored` inputs")
    eval: RewardEvalConfig = Field(default_factory=RewardEvalConfig, description="held-out evaluation (needs "
                                                                                 "policy and prompts inputs)")

    @model_validator(mode="after")
    def _check(self) -> "RewardModelConfig":
        if self.lora is not None:
            raise ValueError("lora: reward models train in full (the head must train)")
        outputs, weights = self.head_spec()
        if len(outputs) != len(weights):
            raise ValueError(f"head has {len(outputs)} outputs but {len(weights)} weights")
        return self

    def head_spec(self) -> tuple[list[str], list[float]]:
        outputs, weights = HEAD_PRESETS[self.head]
        outputs = self.head_outputs or outputs
        weights = self.head_weights or (weights if len(weights) == len(outputs) else [1.0] * len(outputs))
        return list(outputs), list(weights)


class RewardModel(Stage):
    kind = "reward_model"
    version = 3
    distributed = True
    Config = RewardModelConfig
    inputs = {"model": True, "pairs": False, "scored": False, "policy": False, "prompts": False, "ensemble": False}
    description = ("Train a reward model (Bradley-Terry, margin, AFM soft label, HelpSteer2 attributes; centering, "
                   "pointwise, grading and GRM language-modelling regularisers) and measure its held-out accuracy "
                   "and best-of-N gain.")

    def run(self, config: RewardModelConfig, ctx: StageContext) -> StageResult:
        import gc

        from posttrain.judge.reward_scorer import RewardModelScorer
        from posttrain.losses.reward import RewardLossSettings
        from posttrain.models.reward import RewardHead, reward_model_from_causal_lm
        from posttrain.models.runtime import set_cpu_threads
        from posttrain.stages.artifacts import model_dir
        from posttrain.train.distributed import init_distributed
        from posttrain.train.reward import RewardLoss, run_reward_training

        set_cpu_threads()
        outputs, weights = config.head_spec()
        head = RewardHead(tuple(outputs), tuple(weights))
        model, tokenizer = reward_model_from_causal_lm(model_dir(ctx.input("model")), head, seed=config.seed,
                                                       max_tokens=config.max_tokens)
        groups, counts = _read_groups(config, ctx, tokenizer, head)
        loss = RewardLoss(config.loss, RewardLossSettings(
            margins=tuple(config.margins), soft_labels=tuple(config.soft_labels),
            pointwise_alpha=config.pointwise_alpha, centering_coef=config.centering_coef,
            grading_coef=config.grading_coef, lm_coef=config.lm_coef))
        train_config = TrainConfig(**config.model_dump(include=set(TrainConfig.model_fields)))
        summary = run_reward_training(model, tokenizer, groups, train_config, loss, head, ctx.out_dir,
                                      log_fn=ctx.log_metrics)
        counts.update(groups=summary["groups"], pairs=summary["pairs"], steps=summary["steps"],
                      skipped_steps=summary["skipped_steps"])
        del model  # trained and saved: the saved model is loaded once (whole, also after FSDP2) to score
        gc.collect()
        reward_dir = ctx.out_dir / "model"
        dist = init_distributed()
        scorer = RewardModelScorer(reward_dir, device=dist.device)
        scale = _record_scale(scorer, reward_dir, groups, dist)
        metrics = {"final_loss": summary["final_loss"], "train_seconds": round(summary["seconds"], 1),
                   "head": head.as_config(), "loss": config.loss, "reward_scale": scale}
        if ctx.inputs.get("policy") and ctx.inputs.get("prompts") and dist.is_main:  # under torchrun: rank 0 alone
            metrics.update(_evaluate(config, ctx, scorer, scale))
        return StageResult(counts=counts, metrics=metrics, outputs=summary["outputs"])


SCALE_RESPONSES = 1024  # training responses the recorded reward scale is measured on


def _record_scale(scorer, reward_dir, groups, dist, limit: int = SCALE_RESPONSES) -> dict[str, float]:
    """Mean and std of the trained model's reward (`scorer`, unnormalised) over up to `limit` training
    responses (evenly spread), written into its saved config so that scorers can normalise it."""
    from posttrain.models.reward import record_reward_scale, reward_scale
    from posttrain.train.distributed import barrier

    sequences = [s for g in groups for s in g.sequences]
    picked = [sequences[i * len(sequences) // limit] for i in range(limit)] if len(sequences) > limit else sequences
    scale = reward_scale(scorer.head.combine(scorer.outputs_of_ids(picked)))
    if dist.is_main:  # every rank measures the same scale; one writes it
        record_reward_scale(reward_dir, scale)
    barrier(dist)
    return scale


def _response_text(messages) -> str:
    """An answer as text for the similarity filter: contents and tool calls in order."""
    parts = []
    for msg in messages:
        parts.append(msg.content or "")
        parts.extend(f"{c.function.name} {c.function.arguments}" for c in msg.tool_calls or [])
    return " ".join(parts)


def _read_groups(config: RewardModelConfig, ctx: StageContext, tokenizer, head):
    """Training groups from the pairs and scored inputs, after the similarity and length filters."""
    from posttrain.data.chat_templates import detect_template
    from posttrain.data.io import RecordReader
    from posttrain.data.lengths import TOO_LONG
    from posttrain.data.records import Completion, PreferencePair
    from posttrain.data.similarity import rouge_l_f
    from posttrain.stages.artifacts import find_data_file
    from posttrain.train.reward import completion_group, normalise_scores, pair_group

    template = detect_template(tokenizer)
    pair_reader, scored_reader = RecordReader(PreferencePair, ctx.quarantine), RecordReader(Completion, ctx.quarantine)
    pairs = [r for p in ctx.inputs_of("pairs", required=False)
             for r in pair_reader.iter(find_data_file(p, config.pair_files))]
    completions = [r for p in ctx.inputs_of("scored", required=False)
                   for r in scored_reader.iter(find_data_file(p, config.scored_files))]
    for reader in (pair_reader, scored_reader):
        reader.stats.check_share(ctx.max_quarantine_share, f"stage {ctx.stage_id}")
    if not pairs and not completions:
        raise ValueError(f"stage {ctx.stage_id}: no pairs or scored rows to train on (bind `pairs` or `scored`)")
    kept = []
    filtered = config.similarity_threshold is not None
    for pair in pairs:
        if not filtered or getattr(pair.meta, "strategy", None) == "perturbed":
            kept.append(pair)  # minimal edits are near-identical by design: not filtered, not measured
            continue
        similarity = rouge_l_f(_response_text(pair.chosen), _response_text(pair.rejected))
        if similarity >= config.similarity_threshold:
            ctx.dropped.add("similar_responses", detail=f"ROUGE-L F {similarity:.3f} >= {config.similarity_threshold}",
                            row={"id": pair.id})
        else:
            kept.append(pair)
    learnable = [c for c in completions if _has_something_to_learn(c, config.pointwise_alpha, ctx)]
    raw_scores = [s for p in kept for s in (p.chosen_score, p.rejected_score)]
    raw_scores += [r.score for c in learnable for r in c.responses]
    scores = normalise_scores(raw_scores, config.score_normalisation, config.score_range)
    groups, at = [], 0
    for pair in kept:
        groups.append(pair_group(pair, tokenizer, template, head, (scores[at], scores[at + 1]),
                                 config.edited_strength, config.use_edited, lm_masks=config.lm_coef > 0))
        at += 2
    for completion in learnable:
        k = len(completion.responses)
        groups.append(completion_group(completion, tokenizer, template, head, scores[at:at + k],
                                       lm_masks=config.lm_coef > 0))
        at += k
    fitting = []
    for group in groups:
        longest = max(len(s) for s in group.sequences)
        if longest > config.max_tokens and config.on_overflow == "truncate_left":
            group = group.keep_last(config.max_tokens)
        if max(len(s) for s in group.sequences) > config.max_tokens or group.num_tokens > config.micro_batch_tokens:
            ctx.dropped.add(TOO_LONG, detail=f"{longest} tokens per response, {group.num_tokens} per group",
                            row={"id": group.id})
        else:
            fitting.append(group)
    counts = {"input_pairs": len(pairs), "input_scored": len(completions), "kept_pairs": len(kept)}
    return fitting, counts


def _has_something_to_learn(completion, pointwise_alpha: float, ctx: StageContext) -> bool:
    """A pair of different scores, or a score the pointwise term uses; otherwise dropped before tokenizing."""
    scores = {r.score for r in completion.responses if r.score is not None and r.score == r.score}  # NaN: unscored
    if len(scores) > 1 or (pointwise_alpha > 0 and scores):
        return True
    ctx.dropped.add("nothing_to_learn", detail=f"no pair of different scores and pointwise_alpha = {pointwise_alpha:g}",
                    row={"id": completion.id})
    return False


def _evaluate(config: RewardModelConfig, ctx: StageContext, scorer, scale: dict[str, float]) -> dict:
    """Sample from the policy on held-out prompts; accuracy and best-of-N of the trained reward model (`scorer`)."""
    from posttrain.data.chat_templates import detect_template, end_of_turn_ids
    from posttrain.data.io import load_records, write_records
    from posttrain.data.records import Completion, Prompt, Response, first_per_family
    from posttrain.evaluate.reward import evaluate_reward_model, sample_responses
    from posttrain.generate.base import SamplingParams
    from posttrain.generate.chat import generate_chat
    from posttrain.generate.hf import HFGenerator
    from posttrain.models.loading import load_causal_lm
    from posttrain.stages.artifacts import data_file, model_dir
    from posttrain.tinyworld.world import TinyWorldGrader, execute_tool_call

    ev = config.eval
    prompts = load_records([data_file(p, "eval.jsonl") for p in ctx.inputs_of("prompts")], Prompt,
                           ctx.quarantine, ctx.max_quarantine_share, f"stage {ctx.stage_id}")
    prompts = first_per_family(prompts, ev.prompts_per_family)
    policy, tokenizer = load_causal_lm(model_dir(ctx.input("policy")))
    template = detect_template(tokenizer)
    generator = HFGenerator(policy, tokenizer, batch_size=ev.batch_size, eos_token_ids=end_of_turn_ids(tokenizer, template))
    params = SamplingParams(max_new_tokens=ev.max_new_tokens, temperature=ev.temperature, top_p=ev.top_p,
                            seed=config.seed)
    samples = sample_responses(generator, tokenizer, prompts, ev.samples, params, template=template,
                               tool_hook=execute_tool_call)
    greedy = None
    if ev.greedy:
        greedy = generate_chat(generator, tokenizer, [(p.messages, p.tools) for p in prompts],
                               SamplingParams(max_new_tokens=ev.max_new_tokens), template=template,
                               tool_hook=execute_tool_call, max_tool_rounds=2)
    def evaluate(scorer):
        return evaluate_reward_model(scorer, TinyWorldGrader(), prompts, samples, ns=ev.ns, greedy=greedy,
                                     category_of=REWARDBENCH_CATEGORIES, pairs_per_prompt=ev.pairs_per_prompt,
                                     seed=config.seed)

    result = evaluate(scorer)
    ensemble = _evaluate_ensemble(ctx, result.rewards, scale, evaluate) if ctx.inputs.get("ensemble") else {}
    rows = []
    for prompt, replies, rewards, grades in zip(prompts, samples, result.rewards, result.grades):
        responses = [Response(index=i, messages=r, reward=v, score=g.score, reason=g.reason)
                     for i, (r, v, g) in enumerate(zip(replies, rewards, grades))]
        rows.append(Completion(prompt=prompt, responses=responses, meta={"stage": ctx.stage_id}))
    write_records(ctx.out_dir / "eval_samples.jsonl", rows)
    for n in ev.ns:
        ctx.log_metrics({"step": n, **{f"best_of_n_gain/{family}": table[str(n)]["gain"]
                                       for family, table in result.best_of_n.items()}})
    ctx.log_metrics({f"reward_accuracy/{name}": entry["score"] for name, entry in result.accuracy.items()})
    return {"reward_accuracy": result.accuracy, "reward_accuracy_by_category": result.category_accuracy,
            "best_of_n": result.best_of_n, "sample_pass_rates": result.pass_rates,
            "eval_prompts": len(prompts), "eval_samples_per_prompt": ev.samples, **ensemble}


def _evaluate_ensemble(ctx: StageContext, rewards: list[list[float]], scale: dict[str, float], evaluate) -> dict:
    """The same samples ranked by this model (its evaluation `rewards`, not scored again, put on its training
    `scale`) plus the `ensemble` inputs' reward models, each normalised by its recorded scale, summed
    (independently trained reward models rank better together)."""
    from posttrain.judge.reward_scorer import RewardModelScorer
    from posttrain.judge.scorer import FixedScores, WeightedScorer
    from posttrain.stages.artifacts import model_dir

    others = [model_dir(p) for p in ctx.inputs_of("ensemble")]
    members = [ctx.out_dir / "model", *others]
    own = FixedScores([(r - scale["mean"]) / scale["std"] for row in rewards for r in row], name="rm0")
    ensemble = WeightedScorer([(own, 1.0), *((RewardModelScorer(m, normalize=True, name=f"rm{i}"), 1.0)
                                             for i, m in enumerate(others, start=1))], name="ensemble")
    result = evaluate(ensemble)
    ctx.log_metrics({f"ensemble_reward_accuracy/{name}": entry["score"] for name, entry in result.accuracy.items()})
    return {"ensemble": {"members": [str(m) for m in members], "reward_accuracy": result.accuracy,
                         "reward_accuracy_by_category": result.category_accuracy, "best_of_n": result.best_of_n}}
