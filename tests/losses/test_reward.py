"""Reward losses against values worked out by hand on small tensors."""
import math

import pytest
import torch

from posttrain.losses.reward import (
    AFM_SOFT_LABELS,
    CENTERING_COEF,
    GRADING_COEF,
    LLAMA2_MARGINS,
    LM_COEF,
    POINTWISE_ALPHA,
    REWARD_OBJECTIVES,
    UNKNOWN_LEVEL,
    RewardLossSettings,
    RewardTargets,
    bradley_terry_loss,
    centering_penalty,
    level_values,
    margin_loss,
    masked_squared_error,
    ordered_pairs,
    pointwise_mse,
    preferred_nll_penalty,
    reward_objective,
    soft_label_loss,
)

NAN = float("nan")


def softplus(x: float) -> float:
    """-log sigmoid(-x) = log(1 + e^x), by hand."""
    return math.log1p(math.exp(x))


def targets(better, worse, level, score, output_targets) -> RewardTargets:
    long = torch.long
    return RewardTargets(torch.tensor(better, dtype=long), torch.tensor(worse, dtype=long),
                         torch.tensor(level, dtype=long), torch.tensor(score), torch.tensor(output_targets))


def test_bradley_terry_hand_worked():
    # d = 0 -> log 2; d = 2 -> log(1 + e^-2); d = -1 -> log(1 + e^1).
    loss = bradley_terry_loss(torch.tensor([1.0, 3.0, 0.0]), torch.tensor([1.0, 1.0, 1.0]))
    expected = [math.log(2), math.log1p(math.exp(-2)), math.log1p(math.e)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)


def test_margin_at_each_level_and_unknown():
    # r_c - r_r = 1 for every pair; margins 1, 2/3, 1/3, 0 and 0 for an unknown level:
    # loss = log(1 + exp(-(1 - m))).
    level = torch.tensor([0, 1, 2, 3, UNKNOWN_LEVEL])
    margin = level_values(level, LLAMA2_MARGINS, 0.0, torch.zeros(1))
    assert margin.tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0, 0.0])
    loss = margin_loss(torch.ones(5), torch.zeros(5), margin)
    expected = [math.log(2), softplus(-1 / 3), softplus(-2 / 3), softplus(-1), softplus(-1)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("level, p", [(0, 0.95), (1, 0.85), (2, 0.75), (3, 0.65), (UNKNOWN_LEVEL, 1.0)])
def test_soft_label_at_each_level(level, p):
    # d = ln 3: sigmoid(d) = 3/4, sigmoid(-d) = 1/4; loss = -(p ln 3/4 + (1 - p) ln 1/4).
    target = level_values(torch.tensor([level]), AFM_SOFT_LABELS, 1.0, torch.zeros(1))
    assert float(target) == pytest.approx(p)
    loss = soft_label_loss(torch.tensor([math.log(3)]), torch.tensor([0.0]), target)
    assert float(loss) == pytest.approx(-(p * math.log(0.75) + (1 - p) * math.log(0.25)), rel=1e-6)


def test_soft_label_of_one_is_bradley_terry_and_half_is_flat_at_zero_gap():
    chosen, rejected = torch.tensor([0.3, -1.2]), torch.tensor([0.1, 0.4])
    assert torch.allclose(soft_label_loss(chosen, rejected, torch.ones(2)), bradley_terry_loss(chosen, rejected))
    d = torch.zeros(1, requires_grad=True)
    soft_label_loss(d, torch.zeros(1), torch.tensor([0.5])).backward()
    assert float(d.grad) == pytest.approx(0.0, abs=1e-7)  # p = 1/2: no push at d = 0


def test_pointwise_mse_alpha_zero_for_rows_without_scores():
    # alpha = 0.5; rows 0 and 2 have scores: 0.5 * (1 - 0)^2 = 0.5 and 0.5 * (-1 - 1)^2 = 2; row 1: 0.
    rewards = torch.tensor([1.0, 7.0, -1.0], requires_grad=True)
    per_row = pointwise_mse(rewards, torch.tensor([0.0, NAN, 1.0]), 0.5)
    assert per_row.tolist() == [0.5, 0.0, 2.0]
    per_row.sum().backward()
    assert rewards.grad.tolist() == [1.0, 0.0, -2.0]  # 2 alpha (r - s); nothing where no score
    assert pointwise_mse(rewards, torch.tensor([0.0, 0.0, 0.0]), 0.0).sum().item() == 0.0  # alpha = 0 everywhere


def test_centering_penalty():
    # coef 0.01: (1 + 2)^2 = 9 -> 0.09; (-1 + 1)^2 = 0.
    assert centering_penalty(torch.tensor([1.0, -1.0]), torch.tensor([2.0, 1.0]), 0.01).tolist() == pytest.approx([0.09, 0.0])


def test_masked_squared_error_and_attribute_objective():
    # Two responses, three attributes; one target missing. Known errors: (1-0)^2, (2-2)^2, (0-3)^2, (1-1)^2, (4-2)^2.
    outputs = torch.tensor([[1.0, 2.0, 0.0], [1.0, 5.0, 4.0]])
    goal = torch.tensor([[0.0, 2.0, 3.0], [1.0, NAN, 2.0]])
    total, count = masked_squared_error(outputs, goal)
    assert float(total) == 14.0 and float(count) == 5.0
    rewards = outputs @ torch.tensor([1.0, 0.0, 0.0])
    loss_sum, normaliser, metrics = reward_objective("attributes")(
        rewards, outputs, targets([0], [1], [UNKNOWN_LEVEL], [NAN, NAN], goal.tolist()), RewardLossSettings())
    assert float(loss_sum) == 14.0 and float(normaliser) == 5.0
    assert float(metrics["num_pairs_correct"]) == 0.0  # reward 1 vs 1: a tie counts as wrong


def test_attribute_weighting_combines_outputs():
    from posttrain.models.reward import HELPSTEER2_ATTRIBUTES, HELPSTEER2_WEIGHTS, RewardHead

    head = RewardHead(HELPSTEER2_ATTRIBUTES, HELPSTEER2_WEIGHTS)
    # 0.3*4 + 0.74*3 + 0.46*4 + 0.47*2 - 0.33*1 = 1.2 + 2.22 + 1.84 + 0.94 - 0.33 = 5.87
    assert float(head.combine(torch.tensor([[4.0, 3.0, 4.0, 2.0, 1.0]]))) == pytest.approx(5.87)
    reweighted = head.with_weights({"verbosity": 0.0, "helpfulness": 1.0})
    # 4 + 2.22 + 1.84 + 0.94 = 9.0
    assert float(reweighted.combine(torch.tensor([[4.0, 3.0, 4.0, 2.0, 1.0]]))) == pytest.approx(9.0)
    with pytest.raises(ValueError, match="unknown head outputs"):
        head.with_weights({"speed": 1.0})


def test_ordered_pairs_of_ranked_lists():
    # Group 0: edited (rank 0) > chosen (1) > rejected (2) -> 3 pairs; group 1: a tie gives none, 1 pair left.
    ranks = torch.tensor([1, 2, 0, 0, 0, 1])
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    better, worse = ordered_pairs(ranks, groups)
    assert sorted(zip(better.tolist(), worse.tolist())) == [(0, 1), (2, 0), (2, 1), (3, 5), (4, 5)]


def test_bradley_terry_objective_on_a_ranked_list_with_regularisers():
    # rewards e=2, c=1, r=0: pairs (e,c), (e,r), (c,r) -> BT: sp(-1) + sp(-2) + sp(-1);
    # centering 0.01 * ((3)^2 + (2)^2 + (1)^2) = 0.14; pointwise alpha 0.1 on c (score 0.5): 0.1 * 0.25;
    # grading: no output targets. Normaliser: 3 pairs; accuracy 3.
    rewards = torch.tensor([1.0, 0.0, 2.0])
    outputs = rewards[:, None]
    settings = RewardLossSettings(pointwise_alpha=0.1, centering_coef=0.01)
    t = targets([2, 2, 0], [0, 1, 1], [1, 1, UNKNOWN_LEVEL], [0.5, NAN, NAN], [[NAN], [NAN], [NAN]])
    loss_sum, normaliser, metrics = reward_objective("bradley_terry")(rewards, outputs, t, settings)
    expected = 2 * softplus(-1) + softplus(-2) + 0.14 + 0.025
    assert float(loss_sum) == pytest.approx(expected, rel=1e-6)
    assert float(normaliser) == 3.0 and float(metrics["accuracy"]) == 3.0
    assert float(metrics["reward_gap"]) == pytest.approx(1 + 2 + 1)


def test_afm_objective_adds_single_sided_grading():
    # Reward column 0 (weight 1) and one grading column; pair (0, 1) at level 0 (p = 0.95), d = 0:
    # soft label = log 2; grading coef 2 on (0.5 - 1)^2 + (0 - 0)^2 = 0.25 -> 0.5; no centering.
    outputs = torch.tensor([[0.0, 0.5], [0.0, 0.0]])
    rewards = outputs[:, 0]
    settings = RewardLossSettings(centering_coef=0.0, grading_coef=2.0)
    t = targets([0], [1], [0], [NAN, NAN], [[NAN, 1.0], [NAN, 0.0]])
    loss_sum, normaliser, _ = reward_objective("soft_label")(rewards, outputs, t, settings)
    assert float(loss_sum) == pytest.approx(math.log(2) + 0.5, rel=1e-6)
    assert float(normaliser) == 1.0


def test_margin_objective_uses_levels():
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0])
    t = targets([0, 2], [1, 3], [0, UNKNOWN_LEVEL], [NAN] * 4, [[NAN]] * 4)
    settings = RewardLossSettings(centering_coef=0.0)
    loss_sum, _, _ = reward_objective("margin")(rewards, rewards[:, None], t, settings)
    assert float(loss_sum) == pytest.approx(math.log(2) + softplus(-1), rel=1e-6)


def test_empty_micro_batch_keeps_the_graph():
    rewards = torch.zeros(1, requires_grad=True)
    t = targets([], [], [], [NAN], [[NAN]])
    for name, objective in REWARD_OBJECTIVES.items():
        loss_sum, normaliser, _ = objective(rewards * 1.0, rewards[:, None] * 1.0, t, RewardLossSettings())
        assert float(loss_sum.detach()) == 0.0 and float(normaliser) == 0.0, name
        assert loss_sum.requires_grad, name  # DDP needs every rank's loss to reach the parameters


def test_preferred_nll_penalty_hand_worked():
    # token log-probs -1 and -3: mean NLL 2; coef 0.5 and 4 pairs in the micro-batch -> 0.5 * 4 * 2 = 4.
    penalty = preferred_nll_penalty(torch.tensor([-1.0, -3.0]), 0.5, torch.tensor(4.0))
    assert penalty.item() == pytest.approx(4.0)
    # a micro-batch with no preferred token adds nothing
    assert preferred_nll_penalty(torch.zeros(0), 0.5, torch.tensor(4.0)).item() == 0.0


def test_unknown_objective_names_the_choices():
    with pytest.raises(ValueError, match="bradley_terry"):
        reward_objective("hinge")


def test_stage_config_defaults_equal_the_loss_constants():
    from posttrain.stages.reward_model import RewardModelConfig

    config = RewardModelConfig()
    assert tuple(config.margins) == pytest.approx(LLAMA2_MARGINS)
    assert tuple(config.soft_labels) == pytest.approx(AFM_SOFT_LABELS)
    assert config.centering_coef == CENTERING_COEF
    assert config.pointwise_alpha == POINTWISE_ALPHA
    assert config.grading_coef == GRADING_COEF
    assert config.lm_coef == LM_COEF
