"""Preference losses against values worked out by hand.

Most cases use a pair whose log-ratio gap h = ln 3 with beta = 1, so sigmoid(beta h) = 3/4 and
sigmoid(-beta h) = 1/4: every expected value below is a short expression in ln 2, ln 3.
"""
import math

import pytest
import torch

from posttrain.losses.preference import (
    PREFERENCE_LOSSES,
    PairLogps,
    bind_loss,
    preference_metrics,
)

LN3 = math.log(3.0)


def pair(policy_chosen, policy_rejected, reference_chosen=0.0, reference_rejected=0.0, chosen_tokens=1.0,
         rejected_tokens=1.0, chosen_reward=None, rejected_reward=None) -> PairLogps:
    t = lambda v: None if v is None else torch.tensor([float(v)])  # noqa: E731
    return PairLogps(t(policy_chosen), t(policy_rejected), t(reference_chosen), t(reference_rejected),
                     t(chosen_tokens), t(rejected_tokens), t(chosen_reward), t(rejected_reward))


def value(name, logps, **hyper) -> float:
    return float(bind_loss(name, **hyper)(logps))


# h = (pi_c - ref_c) - (pi_r - ref_r) = (-2 + 2) - (-5 - ln3 + 5) = ln 3
LN3_GAP = pair(policy_chosen=-2.0, policy_rejected=-5.0 - LN3, reference_chosen=-2.0, reference_rejected=-5.0)


def test_dpo_with_zero_reference_gap_is_log_2():
    # Policy equals reference on both answers: h = 0, loss = -log sigmoid(0) = log 2 for any beta.
    same = pair(-4.0, -7.0, -4.0, -7.0)
    for beta in (0.1, 1.0, 5.0):
        assert value("dpo", same, beta=beta) == pytest.approx(math.log(2.0))


def test_dpo_hand_worked():
    assert float(LN3_GAP.logratio_gap()) == pytest.approx(LN3)
    assert value("dpo", LN3_GAP, beta=1.0) == pytest.approx(math.log(4 / 3))  # -ln(3/4)
    # beta = 2: sigmoid(2 ln3) = 9/10.
    assert value("dpo", LN3_GAP, beta=2.0) == pytest.approx(math.log(10 / 9))


def test_cdpo_and_rdpo_hand_worked_and_distinct():
    eps = 0.25
    # cDPO: -(3/4) ln(3/4) - (1/4) ln(1/4)
    cdpo = 0.75 * math.log(4 / 3) + 0.25 * math.log(4.0)
    # rDPO: [-(3/4) ln(3/4) + (1/4) ln(1/4)] / (1 - 1/2)
    rdpo = (0.75 * math.log(4 / 3) - 0.25 * math.log(4.0)) / 0.5
    assert value("cdpo", LN3_GAP, beta=1.0, label_smoothing=eps) == pytest.approx(cdpo)
    assert value("rdpo", LN3_GAP, beta=1.0, label_smoothing=eps) == pytest.approx(rdpo)
    # With eps = 0 both are DPO.
    for name in ("cdpo", "rdpo"):
        assert value(name, LN3_GAP, beta=1.0, label_smoothing=0.0) == pytest.approx(math.log(4 / 3))
    with pytest.raises(ValueError):
        value("rdpo", LN3_GAP, beta=1.0, label_smoothing=0.5)


def test_rdpo_is_unbiased_under_label_noise():
    # E over a flip with prob. eps of rDPO(h) = DPO(h): (1-eps) L(h) + eps L(-h) == -log sigmoid(h).
    eps, h = 0.2, 0.7
    flip = pair(0.0, h, chosen_tokens=1, rejected_tokens=1)  # gap -h
    keep = pair(h, 0.0)
    expected = (1 - eps) * value("rdpo", keep, beta=1.0, label_smoothing=eps) + eps * value(
        "rdpo", flip, beta=1.0, label_smoothing=eps)
    assert expected == pytest.approx(-math.log(1 / (1 + math.exp(-h))))


def test_ipo_is_length_normalised():
    # chosen log-ratio +6 over 3 tokens = 2 per token; rejected -2 over 2 tokens = -1: h_norm = 3.
    logps = pair(-4.0, -9.0, -10.0, -7.0, chosen_tokens=3, rejected_tokens=2)
    # beta = 0.5: target 1/(2 beta) = 1, loss (3 - 1)^2 = 4.
    assert value("ipo", logps, beta=0.5) == pytest.approx(4.0)
    # The same sums over twice the tokens halve h_norm: (1.5 - 1)^2.
    longer = pair(-4.0, -9.0, -10.0, -7.0, chosen_tokens=6, rejected_tokens=4)
    assert value("ipo", longer, beta=0.5) == pytest.approx(0.25)


def test_length_normalised_dpo_and_simpo():
    logps = pair(-4.0, -9.0, -10.0, -7.0, chosen_tokens=3, rejected_tokens=2)  # h_norm = 3
    assert value("dpo_length_normalised", logps, beta=LN3 / 3) == pytest.approx(math.log(4 / 3))
    # SimPO ignores the reference: avg chosen -4/2 = -2, avg rejected -9/3 = -3: margin 1.
    simpo = pair(-4.0, -9.0, 123.0, -456.0, chosen_tokens=2, rejected_tokens=3)
    assert value("simpo", simpo, beta=LN3 + 0.5, gamma=0.5) == pytest.approx(math.log(4 / 3))


def test_dpo_nll_per_token_and_per_sequence():
    # DPO part ln(4/3); chosen log-prob -2 over 4 tokens: NLL 0.5 per token, 2 per sequence.
    logps = PairLogps(**{**LN3_GAP.__dict__, "chosen_tokens": torch.tensor([4.0])})
    per_token = value("dpo_nll", logps, beta=1.0, nll_weight=0.5, nll_normalisation="per_token")
    per_sequence = value("dpo_nll", logps, beta=1.0, nll_weight=0.5, nll_normalisation="per_sequence")
    assert per_token == pytest.approx(math.log(4 / 3) + 0.25)
    assert per_sequence == pytest.approx(math.log(4 / 3) + 1.0)
    with pytest.raises(ValueError):
        value("dpo_nll", logps, beta=1.0, nll_weight=0.5, nll_normalisation="per_batch")


def test_rpo_is_zero_when_the_gaps_match():
    # a = beta h = 0.5 * 2 = 1; b = eta * (r+ - r-) = 0.25 * (3 - -1) = 1.
    logps = pair(-1.0, -3.0, chosen_reward=3.0, rejected_reward=-1.0)
    for name in ("rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"):
        assert value(name, logps, beta=0.5, eta=0.25) == pytest.approx(0.0, abs=1e-7)


def test_rpo_hand_worked():
    # a = ln 3 (sigmoid 3/4), b = 0 (rewards equal, sigmoid 1/2).
    logps = PairLogps(**{**LN3_GAP.__dict__, "chosen_reward": torch.tensor([2.0]), "rejected_reward": torch.tensor([2.0])})
    assert value("rpo_sq", logps, beta=1.0, eta=1.0) == pytest.approx(LN3**2)
    # KL(Bern(1/2) || Bern(3/4)) = 1/2 ln(2/3) + 1/2 ln(2) = 1/2 ln(4/3)
    assert value("rpo_bwd_kl", logps, beta=1.0, eta=1.0) == pytest.approx(0.5 * math.log(4 / 3))
    # KL(Bern(3/4) || Bern(1/2)) = 3/4 ln(3/2) + 1/4 ln(1/2)
    assert value("rpo_fwd_kl", logps, beta=1.0, eta=1.0) == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))


def test_rpo_without_rewards_raises():
    with pytest.raises(ValueError, match="reward"):
        value("rpo_sq", LN3_GAP, beta=1.0, eta=1.0)


def test_losses_are_differentiable_and_finite_at_large_gaps():
    for name in PREFERENCE_LOSSES:
        policy = torch.tensor([-1.0, -300.0], requires_grad=True)
        logps = PairLogps(policy, torch.tensor([-400.0, -2.0]), torch.zeros(2), torch.zeros(2),
                          torch.tensor([3.0, 5.0]), torch.tensor([4.0, 2.0]), torch.tensor([1.0, 0.0]),
                          torch.tensor([0.0, 1.0]))
        loss = bind_loss(name, beta=1.0, label_smoothing=0.1, gamma=0.5, nll_weight=1.0,
                         nll_normalisation="per_token", eta=1.0)(logps)
        assert loss.shape == (2,)
        loss.sum().backward()
        assert torch.isfinite(loss).all() and torch.isfinite(policy.grad).all(), name


def test_bind_loss_errors_name_the_problem():
    with pytest.raises(ValueError, match="known"):
        bind_loss("kto", beta=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        bind_loss("cdpo", beta=0.1)


def test_metrics_hand_worked():
    m = preference_metrics(pair(-2.0, -6.0, -3.0, -4.0), beta=0.5)
    assert float(m["chosen_reward"]) == pytest.approx(0.5)
    assert float(m["rejected_reward"]) == pytest.approx(-1.0)
    assert float(m["reward_margin"]) == pytest.approx(1.5)
    assert float(m["reward_accuracy"]) == 1.0
    assert float(m["chosen_logp"]) == -2.0 and float(m["rejected_logp"]) == -6.0
