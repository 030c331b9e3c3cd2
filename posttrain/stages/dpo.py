"""Stage `dpo`: offline preference optimisation (DPO, cDPO, rDPO, IPO, DPO+NLL, SimPO, Nemotron-4's RPO).

Inputs: `model` (the policy to start from), `pairs` (PreferencePair files; several references are
concatenated) and, optionally, `reference` (default: the starting model itself). The reference's
log-probs are computed once before training and stored in the stage directory
(`reference_logps.json`), so the reference model is never in memory while the policy trains and a
resumed stage does not recompute them. Iterative DPO/RPO is a chain of `dpo` stages, each with
`model: previous` and `reference: previous` (see recipes/nemotron-style.yaml).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from posttrain.stages.base import Stage, StageContext, StageResult
from posttrain.train.config import TrainConfig

# The names of posttrain.losses.preference.PREFERENCE_LOSSES (a test keeps the two in step; this
# module may not import torch).
LossName = Literal["dpo", "cdpo", "rdpo", "ipo", "dpo_length_normalised", "simpo", "dpo_nll",
                   "rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"]
REFERENCE_FILE = "reference_logps.json"


class DPOStageConfig(TrainConfig):
    loss: LossName = Field("dpo", description="preference loss (posttrain.losses.preference)")
    beta: float = Field(0.1, gt=0, description="KL strength: implicit reward = beta * log(pi / ref)")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo / rdpo: assumed label-flip probability")
    gamma: float = Field(0.5, description="simpo: target margin")
    nll_weight: float = Field(1.0, ge=0, description="dpo_nll: weight of the NLL on the chosen answer")
    nll_normalisation: Literal["per_token", "per_sequence"] = Field(
        "per_token", description="dpo_nll: NLL divided by the chosen answer's tokens, or summed over them")
    eta: float = Field(1.0, description="rpo_*: scale of the reward gap b = eta * (r(y+) - r(y-))")
    reward_source: Literal["reward", "score"] = Field(
        "reward", description="rpo_*: reward values from chosen_/rejected_reward (a reward model) or _score (a grader)")
    reference_free: bool = Field(False, description="no reference model: reference log-probs are 0")
    mask_special_tokens: bool = Field(
        False, description="mask the chat format's special tokens (headers, end of turn) out of the loss, as Llama 3")
    pairs_per_step: int = Field(64, ge=1, description="preference pairs per optimizer step (all processes)")
    reference_batch_tokens: int = Field(8192, ge=1, description="tokens per packed row of the no-grad reference pass")
    max_tokens: int = Field(512, ge=8, description="longest prompt + answer sequence; longer pairs follow on_overflow")
    on_overflow: Literal["drop", "truncate"] = Field(
        "drop", description="too-long pairs: drop (logged) or truncate (prompt from the left first)")
    data_files: list[str] = Field(["pairs.jsonl", "data.jsonl"], description="file names looked up in pairs artifacts")
    keep_checkpoints: bool = Field(False, description="keep resume checkpoints after the stage finished")
    replay_weight: float = Field(1.0, ge=0, description="with a `replay` input: weight of the per-token NLL "
                                 "on each replayed SFT conversation, added to the pair losses")
    replay_ratio: float = Field(1.0, gt=0, description="with a `replay` input: replayed conversations per pair "
                                "(drawn with the seed; a step takes pairs_per_step x (1 + ratio) items)")
    replay_files: list[str] = Field(["sft.jsonl", "data.jsonl"], description="file names looked up in replay artifacts")

    @model_validator(mode="after")
    def _batching_fits(self) -> "DPOStageConfig":
        if self.accumulation != 1:
            raise ValueError("dpo packs pairs_per_step pairs into as many micro-batches as micro_batch_tokens needs; "
                             "set pairs_per_step instead of accumulation")
        if 2 * self.max_tokens > self.micro_batch_tokens:
            raise ValueError(f"micro_batch_tokens ({self.micro_batch_tokens}) must hold a whole pair: "
                             f"at least 2 * max_tokens = {2 * self.max_tokens}")
        if self.reference_batch_tokens < self.max_tokens:
            raise ValueError(f"reference_batch_tokens ({self.reference_batch_tokens}) < max_tokens ({self.max_tokens})")
        return self


def _model_identity(path: Path) -> str:
    """A model directory's path and its weight files' sizes and mtimes: what the reference cache is keyed on."""
    files = sorted(path.glob("*.safetensors"))
    return f"{path.resolve()}|" + ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


class DPO(Stage):
    kind = "dpo"
    version = 1
    distributed = True
    Config = DPOStageConfig
    inputs = {"model": True, "pairs": True, "reference": False, "replay": False}
    description = ("Preference optimisation (DPO family, RPO) with reference log-probs precomputed once; "
                   "optionally SFT data replayed by NLL beside the pairs.")

    def run(self, config: DPOStageConfig, ctx: StageContext) -> StageResult:
        from posttrain.losses.preference import REFERENCE_FREE_LOSSES
        from posttrain.models.loading import load_causal_lm
        from posttrain.models.runtime import set_cpu_threads
        from posttrain.stages.artifacts import drop_checkpoints, model_dir

        set_cpu_threads()
        policy_dir = model_dir(ctx.input("model"))
        model, tokenizer = load_causal_lm(policy_dir)
        pairs, rows_read = tokenized_pairs(ctx, config, tokenizer)
        reference_free = config.reference_free or config.loss in REFERENCE_FREE_LOSSES
        from_cache = attach_reference(ctx, config, model, policy_dir, pairs, reference_free)
        replay = replay_items(ctx, config, tokenizer, len(pairs))
        summary, last_row = train(ctx, config, model, tokenizer, pairs, replay)
        if not config.keep_checkpoints:
            drop_checkpoints(ctx.out_dir)
        tokens = sum(len(p["chosen"]["input_ids"]) + len(p["rejected"]["input_ids"]) for p in pairs)
        return StageResult(
            counts={"input_rows": rows_read, "pairs": len(pairs), "replayed": len(replay), "tokens": tokens,
                    "steps": summary["steps"], "skipped_steps": summary["skipped_steps"]},
            metrics={"final_loss": summary["final_loss"], "loss": config.loss, "beta": config.beta,
                     "reference": "none" if reference_free else ("cached" if from_cache else "computed"),
                     "train_seconds": round(summary["seconds"], 1),
                     "pairs_per_second": round(len(pairs) * config.epochs / max(summary["seconds"], 1e-9), 2),
                     **{f"last_{k}": round(v, 4) for k, v in last_row.items()
                        if k in ("reward_accuracy", "reward_margin", "chosen_logp", "rejected_logp")}},
            outputs=summary["outputs"],
        )


def tokenized_pairs(ctx: StageContext, config: DPOStageConfig, tokenizer) -> tuple[list[dict], int]:
    """The `pairs` inputs read (malformed rows quarantined) and tokenized (untrainable ones dropped, with the reason)."""
    from posttrain.data.chat_templates import detect_template
    from posttrain.data.io import RecordReader
    from posttrain.data.lengths import LengthPolicy
    from posttrain.data.records import PreferencePair
    from posttrain.losses.preference import REWARD_AWARE_LOSSES
    from posttrain.stages.artifacts import find_data_file
    from posttrain.train.preference import tokenize_pair

    template = detect_template(tokenizer)
    masked = special_token_ids(tokenizer, template) if config.mask_special_tokens else frozenset()
    policy = LengthPolicy(max_tokens=config.max_tokens, on_overflow=config.on_overflow)
    reward_source = config.reward_source if config.loss in REWARD_AWARE_LOSSES else None
    reader, pairs = RecordReader(PreferencePair, ctx.quarantine), []
    for path in ctx.inputs_of("pairs"):
        file = find_data_file(path, config.data_files)
        for record in reader.iter(file):
            example, reason = tokenize_pair(tokenizer, record, template, policy, masked, reward_source)
            if reason:
                ctx.dropped.add(reason, file=str(file), row={"id": record.id})
            else:
                pairs.append(example)
    reader.stats.check_share(ctx.max_quarantine_share, f"stage {ctx.stage_id}")
    if not pairs:
        raise ValueError(f"stage {ctx.stage_id}: no preference pair can train "
                         f"(dropped: {dict(ctx.dropped.counts_by_reason)})")
    return pairs, reader.stats.rows


def replay_items(ctx: StageContext, config: DPOStageConfig, tokenizer, num_pairs: int) -> list[dict]:
    """round(replay_ratio x num_pairs) conversations of the `replay` inputs, drawn with the seed (cycled when
    there are fewer), read and fitted as the sft stage reads them, special tokens masked as in the pairs;
    [] without `replay`."""
    import random

    from posttrain.data.chat_templates import detect_template
    from posttrain.stages.artifacts import find_data_file
    from posttrain.stages.conversations import tokenized_conversations
    from posttrain.train.preference import mask_token_ids, replay_item

    paths = ctx.inputs_of("replay", required=False)
    if not paths:
        return []
    template = detect_template(tokenizer)
    masked = special_token_ids(tokenizer, template) if config.mask_special_tokens else frozenset()
    examples, _ = tokenized_conversations(ctx, [find_data_file(p, config.replay_files) for p in paths], tokenizer,
                                          template, config.max_tokens, config.on_overflow)
    if not examples:
        raise ValueError(f"stage {ctx.stage_id}: the `replay` input has no conversation that fits max_tokens")
    want, rng, order = round(config.replay_ratio * num_pairs), random.Random(f"replay/{ctx.seed}"), []
    while len(order) < want:  # one shuffled pass over the conversations after another
        order += rng.sample(range(len(examples)), len(examples))
    return [replay_item(mask_token_ids(examples[i], masked), examples[i]["id"]) for i in order[:want]]


def train(ctx: StageContext, config: DPOStageConfig, model, tokenizer, pairs: list[dict],
          replay: list[dict]) -> tuple[dict, dict]:
    """Run the preference loop, replayed conversations mixed among the pairs; returns (summary, last metrics row)."""
    from posttrain.data.chat_templates import detect_template, end_of_turn_ids
    from posttrain.losses.preference import bind_loss
    from posttrain.train.preference import run_preference

    rows: list[dict] = []

    def log(row: dict) -> None:
        rows.append(row)
        ctx.log_metrics(row)

    loss = bind_loss(config.loss, beta=config.beta, label_smoothing=config.label_smoothing, gamma=config.gamma,
                     nll_weight=config.nll_weight, nll_normalisation=config.nll_normalisation, eta=config.eta)
    train_config = TrainConfig(**config.model_dump(include=set(TrainConfig.model_fields)))
    items_per_step = round(config.pairs_per_step * (1 + config.replay_ratio)) if replay else config.pairs_per_step
    summary = run_preference(model, tokenizer, pairs + replay, train_config, ctx.out_dir, loss=loss, beta=config.beta,
                             pairs_per_step=items_per_step, log_fn=log,
                             eos_token_ids=end_of_turn_ids(tokenizer, detect_template(tokenizer)),
                             replay_weight=config.replay_weight if replay else 0.0)
    return summary, (rows[-1] if rows else {})


def special_token_ids(tokenizer, template: str) -> frozenset[int]:
    """Ids of the chat format's special tokens (Llama 3: begin/end of text, header start/end, eot)."""
    from posttrain.data.chat_templates import get_template

    vocab = tokenizer.get_vocab()
    return frozenset(vocab[token] for token in get_template(template).special_tokens if token in vocab)


def attach_reference(ctx: StageContext, config: DPOStageConfig, policy_model, policy_dir: Path, pairs: list[dict],
                     reference_free: bool) -> bool:
    """Set pair["reference"] = (chosen, rejected) log-probs; returns whether they came from the stage's cache.

    The reference is the `reference` input when bound to another model (loaded for the pass, then
    freed), else the starting policy itself (before any update it IS the reference, LoRA included).
    """
    import gc

    from posttrain.models.loading import load_causal_lm
    from posttrain.stages.artifacts import model_dir
    from posttrain.train.distributed import init_distributed
    from posttrain.train.engine import autocast_dtype
    from posttrain.train.preference import cached_reference_logps, reference_logps

    if reference_free:
        for pair in pairs:
            pair["reference"] = (0.0, 0.0)
        return False
    bound = ctx.inputs_of("reference", required=False)
    reference_dir = model_dir(bound[0]) if bound else policy_dir
    separate = reference_dir.resolve() != policy_dir.resolve()
    dist = init_distributed()

    def compute():
        model = load_causal_lm(reference_dir)[0] if separate else policy_model
        model.to(dist.device)
        logps = reference_logps(model, pairs, config.reference_batch_tokens, config.logprob_chunk_size, dist.device,
                                autocast_dtype(config, dist.device))
        if separate:
            del model
            gc.collect()
        return logps

    logps, from_cache = cached_reference_logps(ctx.out_dir / REFERENCE_FILE, compute, pairs,
                                               _model_identity(reference_dir), dist)
    for pair, (chosen, rejected) in zip(pairs, logps.tolist()):
        pair["reference"] = (chosen, rejected)
    return from_cache
