"""Reward-model losses: one pure function per published variant, and a registry that picks one by name.

A reward model scores N responses of a micro-batch. Each objective takes
    rewards  (N,)    the scalar reward of each response (the head's outputs combined by its weights)
    outputs  (N, K)  the head's raw outputs (K = 1 for a scalar head)
    targets  `RewardTargets`: ordered pairs (better, worse, preference level) as indices into the N
             responses, each response's normalised absolute score and per-output targets (NaN = none)
    settings `RewardLossSettings`: every constant, with the papers' defaults below
and returns (loss_sum, normaliser, metrics). Sums, not means: the engine divides the summed loss
of a whole optimizer step by the summed normaliser (pairs for the pairwise objectives, targets for
attribute regression), so micro-batch boundaries do not change the update.

Ranked lists (Llama 3: edited > chosen > rejected) are not a separate loss: `ordered_pairs` turns
each prompt's ranking into all its ordered pairs, and any pairwise objective trains on them, with
the responses of one prompt packed into the same micro-batch.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

# The four preference levels of Llama 2/3 and AFM, strongest first; a pair's level indexes the tables.
PREFERENCE_LEVELS = ("significantly_better", "better", "slightly_better", "negligibly_better")
UNKNOWN_LEVEL = -1  # a pair without an annotated strength

# Llama 2 (Touvron et al. 2023, Table 27) "margin small": 1, 2/3, 1/3, 0 for the four levels
# ("margin large" is 3, 2, 1, 0). A pair of unknown level gets margin 0 (plain Bradley-Terry).
LLAMA2_MARGINS = (1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0)
# AFM (Apple 2024, "Apple Intelligence Foundation Language Models") trains against a target
# probability that grows with the preference level but publishes no values; these are ours. A pair of
# unknown level gets target 1 (a hard label: the loss is Bradley-Terry).
AFM_SOFT_LABELS = (0.95, 0.85, 0.75, 0.65)
# Eisenstein et al. 2023 ("Helping or Herding? Reward Model Ensembles Mitigate but do not Eliminate
# Reward Hacking"): auxiliary loss eta * (r+ + r-)^2 with eta = 0.01.
CENTERING_COEF = 0.01
# Baichuan 2 (Yang et al. 2023) regresses rewards onto absolute scores but gives no weight; 0 = off.
POINTWISE_ALPHA = 0.0
# AFM adds single-sided gradings as a regulariser without a published weight; ours.
GRADING_COEF = 1.0
# Yang et al. 2024 ("Regularizing Hidden States Enables Learning Generalizable Reward Model for LLMs",
# GRM) keep the language-modelling loss on the preferred responses beside the reward loss, through the
# backbone's LM head, so the hidden states stay those of a language model; 0 = off.
LM_COEF = 0.0


@dataclasses.dataclass
class RewardTargets:
    """What the N responses of a micro-batch are trained toward."""

    better: torch.Tensor  # (P,) long: index of the preferred response of each ordered pair
    worse: torch.Tensor  # (P,) long: index of the other one
    level: torch.Tensor  # (P,) long: index into PREFERENCE_LEVELS, UNKNOWN_LEVEL when not annotated
    score: torch.Tensor  # (N,) float: normalised absolute score, NaN where the response has none
    output_targets: torch.Tensor  # (N, K) float: target of each head output, NaN where none

    def to(self, device: torch.device | str) -> "RewardTargets":
        return RewardTargets(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


@dataclasses.dataclass(frozen=True)
class RewardLossSettings:
    """Every constant of the reward losses (defaults: the module constants above)."""

    margins: tuple[float, ...] = LLAMA2_MARGINS  # per level, for `margin`
    soft_labels: tuple[float, ...] = AFM_SOFT_LABELS  # per level, for `soft_label`
    pointwise_alpha: float = POINTWISE_ALPHA  # Baichuan 2 pointwise MSE weight (any pairwise objective)
    centering_coef: float = CENTERING_COEF  # reward centering weight (any pairwise objective)
    grading_coef: float = GRADING_COEF  # AFM single-sided grading weight (any pairwise objective)
    lm_coef: float = LM_COEF  # GRM language-modelling weight on the preferred responses (any objective)


LossResult = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
Objective = Callable[[torch.Tensor, torch.Tensor, RewardTargets, RewardLossSettings], LossResult]


# ---------------------------------------------------------------- per-pair and per-response terms


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry pairwise loss (Ouyang et al. 2022; Llama 3 without Llama 2's margin), per pair.

    loss = -log sigmoid(r_chosen - r_rejected). chosen, rejected: (P,) -> (P,).
    """
    return -F.logsigmoid(chosen - rejected)


def margin_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """Llama 2's preference-margin loss (Touvron et al. 2023, eq. 2), per pair.

    loss = -log sigmoid(r_chosen - r_rejected - m(level)): a clearly better answer must win by more.
    """
    return -F.logsigmoid(chosen - rejected - margin)


def soft_label_loss(chosen: torch.Tensor, rejected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AFM's soft-label Bradley-Terry-Luce loss (Apple 2024), per pair.

    Cross entropy against the target probability p(level) that chosen beats rejected:
    loss = -[p log sigmoid(d) + (1 - p) log sigmoid(-d)], d = r_chosen - r_rejected. Weak
    preferences then pull the two rewards less far apart; p = 1 is Bradley-Terry.
    """
    diff = chosen - rejected
    return -(target * F.logsigmoid(diff) + (1.0 - target) * F.logsigmoid(-diff))


def centering_penalty(chosen: torch.Tensor, rejected: torch.Tensor, coef: float) -> torch.Tensor:
    """Reward centering (Eisenstein et al. 2023), per pair: coef * (r_chosen + r_rejected)^2.

    Pairwise losses only fix differences; this pins the mean reward near zero so scores from
    different runs (or ensembles) are comparable.
    """
    return coef * (chosen + rejected) ** 2


def pointwise_mse(rewards: torch.Tensor, scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Baichuan 2's pointwise regulariser, per response: alpha_i * (r_i - s_i)^2.

    s_i is the response's normalised absolute score; alpha_i = alpha where it has one and 0 where
    it has none (NaN), so the reward keeps an absolute meaning where labels allow, and is harder
    to hack by inflating every reward. rewards, scores: (N,) -> (N,).
    """
    known = ~torch.isnan(scores)
    target = torch.where(known, scores, rewards.detach())  # no NaN reaches the graph
    return alpha * known.to(rewards.dtype) * (rewards - target) ** 2


def preferred_nll_penalty(token_logprobs: torch.Tensor, coef: float, normaliser: torch.Tensor) -> torch.Tensor:
    """GRM's language-modelling regulariser (Yang et al. 2024): coef * normaliser * mean NLL.

    token_logprobs: (M,) log-probs of the preferred responses' tokens in one micro-batch (M may be 0:
    no penalty). The mean NLL per token is scaled by the micro-batch's normaliser (its pairs), so that
    after the engine divides a step's sums by its summed normaliser the term is a pair-weighted mean of
    per-token NLLs, times coef.
    """
    if token_logprobs.numel() == 0:
        return token_logprobs.sum() * 0.0
    return coef * normaliser * -token_logprobs.mean()


def masked_squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of (o - t)^2 over the entries whose target is known, number of those entries).

    outputs, targets: (N, K); NaN targets are left out (missing attributes, or the reward column of a
    head whose other columns are AFM gradings).
    """
    known = ~torch.isnan(targets)
    safe = torch.where(known, targets, outputs.detach())
    squared = known.to(outputs.dtype) * (outputs - safe) ** 2
    return squared.sum(), known.sum().to(outputs.dtype)


def level_values(level: torch.Tensor, table: tuple[float, ...], unknown: float, like: torch.Tensor) -> torch.Tensor:
    """table[level] per pair, `unknown` where level is UNKNOWN_LEVEL. level: (P,) -> (P,) like `like`."""
    values = torch.tensor((*table, unknown), dtype=like.dtype, device=like.device)
    return values[torch.where(level < 0, len(table), level)]


def ordered_pairs(ranks: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs of a ranked list (Llama 3: edited > chosen > rejected), per group.

    ranks: (N,) lower is better; groups: (N,) which prompt each response answers. Returns (better,
    worse), each (P,) long: every (i, j) in the same group with ranks[i] < ranks[j]; ties give no pair.
    Three ranked responses give three pairs.
    """
    same_group = groups[:, None] == groups[None, :]  # (N, N)
    better_first = ranks[:, None] < ranks[None, :]  # (N, N)
    better, worse = torch.nonzero(same_group & better_first, as_tuple=True)
    return better, worse


# ---------------------------------------------------------------- objectives (the registry)


def _pairwise_objective(pair_losses: torch.Tensor, rewards: torch.Tensor, outputs: torch.Tensor,
                        targets: RewardTargets, settings: RewardLossSettings) -> LossResult:
    """Pair losses plus the regularisers every pairwise objective shares, normalised by the pairs.

    loss_sum = sum_pairs [loss + centering] + sum_responses alpha_i (r_i - s_i)^2
               + grading_coef * sum_known (o - t)^2
    """
    chosen, rejected = rewards[targets.better], rewards[targets.worse]  # (P,) each
    loss_sum = pair_losses.sum()
    loss_sum = loss_sum + centering_penalty(chosen, rejected, settings.centering_coef).sum()
    loss_sum = loss_sum + pointwise_mse(rewards, targets.score, settings.pointwise_alpha).sum()
    grading_sum, _ = masked_squared_error(outputs, targets.output_targets)
    loss_sum = loss_sum + settings.grading_coef * grading_sum
    gap = (chosen - rejected).detach()
    metrics = {
        "accuracy": (gap > 0).to(rewards.dtype).sum(),  # strictly greater; ties count as wrong
        "reward_gap": gap.sum(),
        "num_pairs": torch.tensor(float(gap.numel()), device=rewards.device),
    }
    return loss_sum, torch.tensor(float(gap.numel()), device=rewards.device), metrics


def bradley_terry_objective(rewards, outputs, targets: RewardTargets, settings: RewardLossSettings) -> LossResult:
    """Bradley-Terry on every ordered pair (Llama 3), plus the shared regularisers."""
    losses = bradley_terry_loss(rewards[targets.better], rewards[targets.worse])
    return _pairwise_objective(losses, rewards, outputs, targets, settings)


def margin_objective(rewards, outputs, targets: RewardTargets, settings: RewardLossSettings) -> LossResult:
    """Llama 2's margin by preference level, plus the shared regularisers."""
    margin = level_values(targets.level, settings.margins, 0.0, rewards)
    losses = margin_loss(rewards[targets.better], rewards[targets.worse], margin)
    return _pairwise_objective(losses, rewards, outputs, targets, settings)


def soft_label_objective(rewards, outputs, targets: RewardTargets, settings: RewardLossSettings) -> LossResult:
    """AFM's soft-label BTL, plus the shared regularisers (AFM's single-sided gradings among them)."""
    target = level_values(targets.level, settings.soft_labels, 1.0, rewards)
    losses = soft_label_loss(rewards[targets.better], rewards[targets.worse], target)
    return _pairwise_objective(losses, rewards, outputs, targets, settings)


def attribute_regression_objective(rewards, outputs, targets: RewardTargets,
                                   settings: RewardLossSettings) -> LossResult:
    """Multi-attribute regression (Nemotron-4 340B reward, HelpSteer2; Wang et al. 2024).

    loss = sum over known (response, attribute) targets of (o - t)^2, normalised by their count.
    Pairs are not trained on; their accuracy under the combined reward is reported.
    """
    loss_sum, count = masked_squared_error(outputs, targets.output_targets)
    gap = (rewards[targets.better] - rewards[targets.worse]).detach()
    metrics = {
        "mse": loss_sum.detach(),
        "num_pairs": torch.tensor(float(gap.numel()), device=rewards.device),
        "num_pairs_correct": (gap > 0).to(rewards.dtype).sum(),
    }
    return loss_sum, count, metrics


REWARD_OBJECTIVES: dict[str, Objective] = {
    "bradley_terry": bradley_terry_objective,
    "margin": margin_objective,
    "soft_label": soft_label_objective,
    "attributes": attribute_regression_objective,
}


def reward_objective(name: str) -> Objective:
    """The objective registered as `name`."""
    if name not in REWARD_OBJECTIVES:
        raise ValueError(f"unknown reward loss {name!r}; choose one of {', '.join(sorted(REWARD_OBJECTIVES))}")
    return REWARD_OBJECTIVES[name]
