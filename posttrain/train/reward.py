"""Reward-model training on the engine: groups of responses -> packed micro-batches -> one loss by name.

A group is every response to one prompt (a pair's chosen and rejected, the edited answer when there
is one, or all scored samples of a completion), tokenized as prompt + response, with its ordered
pairs and per-response targets. Each epoch: shuffle the groups and the responses inside each group
(pure in seed and epoch), pack whole groups best-fit-decreasing into rows of at most
`micro_batch_tokens` tokens (so the responses of one prompt share a micro-batch and a step), shuffle
the rows and take `accumulation x world_size` per optimizer step. The loss is the registry's
objective (`posttrain.losses.reward`) on the head outputs read at each sequence's last token, plus,
with `lm_coef`, GRM's language-modelling term on the tokens of each group's preferred responses (the
ones that win a pair and lose none), read through the tied embeddings from the same hidden states.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from posttrain.data.packing import PackedBatch, collate_packed, pack_best_fit_decreasing
from posttrain.data.records import Completion, PreferencePair
from posttrain.data.tokenize import tokenize_conversation
from posttrain.losses.reward import (
    PREFERENCE_LEVELS,
    UNKNOWN_LEVEL,
    RewardLossSettings,
    RewardTargets,
    ordered_pairs,
    preferred_nll_penalty,
    reward_objective,
)
from posttrain.models.forward import unwrap_model
from posttrain.models.logprobs import shifted_targets, token_logprobs
from posttrain.models.reward import (
    RewardHead,
    packed_head_outputs,
    packed_hidden,
    save_reward_model,
    tied_lm_head_weight,
)
from posttrain.train.config import TrainConfig
from posttrain.train.distributed import DistContext, barrier, choose_parallel, init_distributed, rank_steps
from posttrain.train.engine import LossFn, LossOutput, Trainer, plan_total_steps
from posttrain.train.mixture import mixture_rng
from posttrain.train.step_log import LogFn

__all__ = [
    "RewardBatch", "RewardGroup", "RewardLoss", "RewardPlan", "completion_group", "normalise_scores",
    "pair_group", "reward_loss_fn", "run_reward_training",
]

NAN = float("nan")


# ---------------------------------------------------------------- data: groups of responses


@dataclasses.dataclass
class RewardGroup:
    """The responses to one prompt, tokenized, with what they are trained toward."""

    sequences: list[list[int]]  # prompt + response token ids, one per response
    pairs: list[tuple[int, int, int]]  # (better, worse, level) indices into sequences
    scores: list[float]  # normalised absolute score per response, NaN = none
    output_targets: list[list[float]]  # per response, one target per head output, NaN = none
    id: str = ""
    # only for the LM regulariser: per response, True at the tokens it trains (a preferred response's own
    # assistant tokens); [] for the other responses, and no list at all when the group was built without
    lm_masks: list[list[bool]] = dataclasses.field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def keep_last(self, max_tokens: int) -> "RewardGroup":
        """The group with every sequence cut to its last `max_tokens` tokens (the reward reads the end)."""
        return dataclasses.replace(self, sequences=[s[-max_tokens:] for s in self.sequences],
                                   lm_masks=[m[-max_tokens:] for m in self.lm_masks])


def normalise_scores(values: Sequence[float | None], method: str, score_range: tuple[float, float]) -> list[float]:
    """Absolute scores mapped for the pointwise regulariser; None -> NaN (no score, alpha = 0).

    range: [low, high] -> [-1, 1] linearly (a grader's [0, 1] by default);
    zscore: (s - mean) / std over the given values; none: as given.
    """
    known = [float(v) for v in values if v is not None]
    if method == "range":
        low, high = score_range
        if high <= low:
            raise ValueError(f"score_range must have high > low, got {score_range}")
        scale, shift = 2.0 / (high - low), -1.0 - 2.0 * low / (high - low)
    elif method == "zscore":
        mean = sum(known) / len(known) if known else 0.0
        std = math.sqrt(sum((v - mean) ** 2 for v in known) / len(known)) if known else 1.0
        scale, shift = 1.0 / (std or 1.0), -mean / (std or 1.0)
    elif method == "none":
        scale, shift = 1.0, 0.0
    else:
        raise ValueError(f"unknown score normalisation {method!r}; choose range, zscore or none")
    return [NAN if v is None else float(v) * scale + shift for v in values]


def _level(strength: str | None) -> int:
    return PREFERENCE_LEVELS.index(strength) if strength is not None else UNKNOWN_LEVEL


def _stronger(a: int, b: int) -> int:
    """The stronger of two levels (lower index), ignoring unknown ones."""
    known = [x for x in (a, b) if x != UNKNOWN_LEVEL]
    return min(known) if known else UNKNOWN_LEVEL


def _ranked_pairs(ranks: list[int]) -> list[tuple[int, int]]:
    better, worse = ordered_pairs(torch.tensor(ranks), torch.zeros(len(ranks), dtype=torch.long))
    return list(zip(better.tolist(), worse.tolist()))


def _response_mask(assistant_mask: list[bool], turns: int) -> list[bool]:
    """The assistant mask cut to its last `turns` runs: the response's own assistant messages, not the prompt's."""
    out, runs = [False] * len(assistant_mask), 0
    for i in range(len(assistant_mask) - 1, -1, -1):
        if assistant_mask[i]:
            if i + 1 == len(assistant_mask) or not assistant_mask[i + 1]:
                runs += 1  # scanning backwards, a run is met at its last token
                if runs > turns:
                    break
            out[i] = True
    return out


def _tokenize_all(tokenizer: Any, template: str, prompt, responses, preferred: set[int] | None):
    """(sequences, lm_masks): prompt + response ids per response, and, when `preferred` is given, the
    preferred responses' own tokens ([] for the others; no masks at all when it is None)."""
    sequences, masks = [], []
    for i, response in enumerate(responses):
        chat = tokenize_conversation(tokenizer, prompt.messages + list(response), prompt.tools, template)
        sequences.append(chat.input_ids)
        if preferred is not None:
            turns = sum(1 for m in response if m.role == "assistant")
            masks.append(_response_mask(chat.assistant_mask, turns) if i in preferred else [])
    return sequences, masks


def _preferred(pairs: list[tuple[int, int, int]]) -> set[int]:
    """Responses that win a pair and lose none: what the LM regulariser trains on."""
    return {b for b, _, _ in pairs} - {w for _, w, _ in pairs}


def _targets_row(head: RewardHead, attributes: dict[str, float] | None) -> list[float]:
    attributes = attributes or {}
    return [float(attributes[name]) if name in attributes else NAN for name in head.outputs]


def pair_group(pair: PreferencePair, tokenizer: Any, template: str, head: RewardHead,
               scores: tuple[float, float], edited_strength: str | None, use_edited: bool = True,
               lm_masks: bool = False) -> RewardGroup:
    """A pair (and its edited answer, when used) as a ranked group: edited > chosen > rejected.

    `scores`: the normalised absolute scores of chosen and rejected (NaN = none). Pairs with the
    edited answer take `edited_strength` against chosen and the stronger of it and the pair's own
    strength against rejected. `lm_masks`: also mark the preferred response's tokens (for `lm_coef`).
    """
    responses = [pair.chosen, pair.rejected]
    level = _level(pair.strength)
    score_list = list(scores)
    targets = [_targets_row(head, pair.chosen_attributes), _targets_row(head, pair.rejected_attributes)]
    ranks = [1, 2]
    if use_edited and pair.edited is not None:
        responses.append(pair.edited)
        score_list.append(NAN)
        targets.append(_targets_row(head, None))
        ranks.append(0)
    edited_level = _level(edited_strength)
    levels = {(0, 1): level, (2, 0): edited_level, (2, 1): _stronger(edited_level, level)}
    pairs = [(b, w, levels[(b, w)]) for b, w in _ranked_pairs(ranks)]
    preferred = _preferred(pairs) if lm_masks else None
    sequences, masks = _tokenize_all(tokenizer, template, pair.prompt, responses, preferred)
    return RewardGroup(sequences, pairs, score_list, targets, id=pair.id, lm_masks=masks)


def completion_group(completion: Completion, tokenizer: Any, template: str, head: RewardHead,
                     scores: list[float], lm_masks: bool = False) -> RewardGroup:
    """Scored samples of one prompt as a ranked group: every pair with strictly different scores.

    `scores`: normalised scores per response (NaN = none); ranking uses the raw `score` field, and
    responses without one take part in no pair. `lm_masks`: also mark the top-ranked responses' tokens.
    """
    raw = [r.score for r in completion.responses]
    distinct = sorted({s for s in raw if s is not None}, reverse=True)
    ranks = [distinct.index(s) if s is not None else -1 for s in raw]
    pairs = [(b, w, UNKNOWN_LEVEL) for b, w in _ranked_pairs(ranks) if ranks[b] >= 0 and ranks[w] >= 0]
    sequences, masks = _tokenize_all(tokenizer, template, completion.prompt, [r.messages for r in completion.responses],
                                     _preferred(pairs) if lm_masks else None)
    targets = [_targets_row(head, None) for _ in completion.responses]
    return RewardGroup(sequences, pairs, list(scores), targets, id=completion.id, lm_masks=masks)


# ---------------------------------------------------------------- micro-batches and the plan


@dataclasses.dataclass
class RewardBatch:
    """One packed row of responses and their targets (pairs index into the row's sequences)."""

    packed: PackedBatch
    targets: RewardTargets

    @property
    def input_ids(self) -> torch.Tensor:  # what the engine counts as tokens
        return self.packed.input_ids

    def to(self, device: torch.device | str) -> "RewardBatch":
        return RewardBatch(self.packed.to(device), self.targets.to(device))


def collate_groups(groups: Sequence[RewardGroup], orders: Sequence[Sequence[int]], num_outputs: int) -> RewardBatch:
    """Pack groups into one row, each group's responses in the given order; pairs re-indexed to the row."""
    examples, better, worse, levels, scores, targets = [], [], [], [], [], []
    for group, order in zip(groups, orders):
        offset = len(examples)
        position = {response: offset + slot for slot, response in enumerate(order)}
        for response in order:
            ids = group.sequences[response]
            lm_mask = group.lm_masks[response] if group.lm_masks else []
            examples.append({"input_ids": ids, "loss_mask": lm_mask or [False] * len(ids)})
            scores.append(group.scores[response])
            targets.append(group.output_targets[response])
        for b, w, level in group.pairs:
            better.append(position[b])
            worse.append(position[w])
            levels.append(level)
    if not examples:  # an empty row pads a step so every process runs the same number of passes
        examples, scores, targets = [{"input_ids": [0], "loss_mask": [False]}], [NAN], [[NAN] * num_outputs]
    return RewardBatch(
        packed=collate_packed(examples),
        targets=RewardTargets(
            better=torch.tensor(better, dtype=torch.long),
            worse=torch.tensor(worse, dtype=torch.long),
            level=torch.tensor(levels, dtype=torch.long),
            score=torch.tensor(scores, dtype=torch.float32),
            output_targets=torch.tensor(targets, dtype=torch.float32).reshape(len(scores), num_outputs),
        ),
    )


class _EpochSteps(Sequence):
    """This process's micro-batches for each step of one epoch; rows are collated when a step is read."""

    def __init__(self, steps: list[list[list[tuple[RewardGroup, list[int]]]]], num_outputs: int):
        self._steps, self._num_outputs = steps, num_outputs  # step -> rows -> (group, response order)

    def __len__(self) -> int:
        return len(self._steps)

    def __getitem__(self, index: int) -> list[RewardBatch]:
        return [collate_groups([g for g, _ in row], [o for _, o in row], self._num_outputs) for row in self._steps[index]]


class RewardPlan:
    """The reward-model StepPlan: a pure function of (groups, config, seed, epoch, rank, world size)."""

    def __init__(self, groups: list[RewardGroup], config: TrainConfig, num_outputs: int, ctx: DistContext):
        self.groups, self.config, self.num_outputs, self.ctx = groups, config, num_outputs, ctx
        self.epochs = config.epochs
        self._cache: dict[int, _EpochSteps] = {}

    def rows(self, epoch: int) -> list[list[tuple[RewardGroup, list[int]]]]:
        """The epoch's rows of (group, shuffled response order), in training order, for all processes."""
        rng = mixture_rng(self.config.seed, epoch, "reward_groups")
        order = rng.permutation(len(self.groups))
        chosen = [self.groups[i] for i in order]
        packed = pack_best_fit_decreasing([g.num_tokens for g in chosen], self.config.micro_batch_tokens)
        rows = [[(chosen[i], rng.permutation(len(chosen[i].sequences)).tolist()) for i in row] for row in packed]
        shuffle = mixture_rng(self.config.seed, epoch, "reward_rows").permutation(len(rows))
        return [rows[i] for i in shuffle]

    def steps(self, epoch: int) -> _EpochSteps:
        if epoch not in self._cache:
            steps = rank_steps(self.rows(epoch), self.config.accumulation, self.ctx, [])
            self._cache = {epoch: _EpochSteps(steps, self.num_outputs)}  # keep one epoch in memory
        return self._cache[epoch]


# ---------------------------------------------------------------- the loss and the run


@dataclasses.dataclass(frozen=True)
class RewardLoss:
    """Which objective (a `REWARD_OBJECTIVES` name) and its constants."""

    name: str = "bradley_terry"
    settings: RewardLossSettings = RewardLossSettings()


def reward_loss_fn(loss: RewardLoss, head: RewardHead) -> LossFn:
    """loss_fn(model, RewardBatch) for the engine: head outputs at each last token -> the named objective."""
    objective = reward_objective(loss.name)

    def loss_fn(model, batch: RewardBatch) -> LossOutput:
        hidden = packed_hidden(model, batch.packed)  # (1, T, H)
        outputs = packed_head_outputs(model, batch.packed, hidden).float()  # (N, K)
        rewards = head.combine(outputs)  # (N,)
        loss_sum, normaliser, metrics = objective(rewards, outputs, batch.targets, loss.settings)
        if loss.settings.lm_coef > 0:
            targets, mask = shifted_targets(batch.packed)  # (1, T) each
            token_lp = token_logprobs(hidden[mask], tied_lm_head_weight(model), targets[mask])
            loss_sum = loss_sum + preferred_nll_penalty(token_lp, loss.settings.lm_coef, normaliser)
            metrics = {**metrics, "lm_nll": preferred_nll_penalty(token_lp.detach(), 1.0, normaliser),  # per token
                       "num_lm_tokens": torch.tensor(float(token_lp.numel()), device=token_lp.device)}
        return LossOutput(loss_sum, normaliser, metrics)

    return loss_fn


def save_trained_reward_model(trainer: Trainer, tokenizer: Any, out_dir: Path) -> dict[str, str]:
    """Save the trained reward model as HF (gathered first under FSDP2); returns {'model': 'model'}."""
    if trainer.parallel == "fsdp2":
        state = trainer.full_model_state()  # collective: every rank gathers, rank 0 keeps it
        if trainer.ctx.is_main:
            save_reward_model(trainer.model, tokenizer, out_dir / "model", state_dict=state)
    elif trainer.ctx.is_main:
        save_reward_model(unwrap_model(trainer.model), tokenizer, out_dir / "model")
    barrier(trainer.ctx)
    return {"model": "model"}


def run_reward_training(
    model,
    tokenizer: Any,
    groups: list[RewardGroup],
    config: TrainConfig,
    loss: RewardLoss,
    head: RewardHead,
    out_dir: Path | str,
    log_fn: LogFn | None = None,
) -> dict[str, Any]:
    """Train a reward model (from `reward_model_from_causal_lm`) on groups and save it to out_dir/model.

    Checkpoints go to out_dir/checkpoints and a cut-off run resumes from the latest one.
    """
    if config.lora is not None:
        raise NotImplementedError("LoRA reward models are not supported yet: the head must train in full")
    out_dir = Path(out_dir)
    ctx = init_distributed()
    too_long = [g.id for g in groups if g.num_tokens > config.micro_batch_tokens]
    if too_long:
        raise ValueError(f"{len(too_long)} groups exceed micro_batch_tokens={config.micro_batch_tokens} "
                         f"(first: {too_long[0]}); drop or shorten them first")
    if not groups:
        raise ValueError("no reward-model group to train on")
    if loss.settings.lm_coef > 0:  # refused here, before the model is wrapped or a step is taken
        tied_lm_head_weight(model)
        if choose_parallel(config.parallel, ctx) == "fsdp2":
            raise NotImplementedError("lm_coef with FSDP2: the tied embedding is sharded outside its module's "
                                      "forward; use DDP (parallel: ddp) or lm_coef: 0")
        if not any(any(mask) for g in groups for mask in g.lm_masks):
            raise ValueError("lm_coef > 0 but no group marks a preferred response's tokens: build the groups "
                             "with lm_masks=True")
    plan = RewardPlan(groups, config, head.size, ctx)
    trainer = Trainer(model, config, reward_loss_fn(loss, head), total_steps=plan_total_steps(plan, config.max_steps),
                      checkpoint_dir=out_dir / "checkpoints", log_fn=log_fn, ctx=ctx)
    fit = trainer.fit(plan)
    outputs = save_trained_reward_model(trainer, tokenizer, out_dir)
    return {
        **fit,  # steps, skipped_steps, final_loss, losses, seconds
        "groups": len(groups),
        "pairs": sum(len(g.pairs) for g in groups),
        "outputs": outputs,
    }
