"""Offline preference losses: DPO and its variants, and Nemotron-4's reward-aware RPO.

Every loss is a pure function of one `PairLogps` (sequence log-probs of the chosen and rejected
answers under the policy and the reference, their loss-token counts and, for RPO, reward values)
and its own hyperparameters; it returns the per-pair loss, (P,). `PREFERENCE_LOSSES` picks one by
name and `bind_loss` fixes its hyperparameters: a new variant is a function and one line in the
dict, never a branch in a trainer.

Notation (per pair): pi_c, pi_r = summed log-probs of chosen / rejected under the policy; ref_c,
ref_r = the same under the reference; n_c, n_r = their loss-token counts; and the log-ratio gap

    h = (pi_c - ref_c) - (pi_r - ref_r)        beta * h = the implicit reward margin (DPO's r_c - r_r)

A reference-free variant is the same function with ref_c = ref_r = 0 (the trainer's
`reference_free` option); a length-normalised one divides each log-ratio by its token count.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class PairLogps:
    """Sequence log-probs of P preference pairs, each (P,) float32."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    chosen_tokens: torch.Tensor  # loss tokens of each chosen answer (n_c)
    rejected_tokens: torch.Tensor  # (n_r)
    chosen_reward: torch.Tensor | None = None  # reward model r*(x, y+), for RPO
    rejected_reward: torch.Tensor | None = None  # r*(x, y-)

    def logratio_gap(self) -> torch.Tensor:
        """h = (pi_c - ref_c) - (pi_r - ref_r), (P,)."""
        return (self.policy_chosen - self.reference_chosen) - (self.policy_rejected - self.reference_rejected)

    def normalised_logratio_gap(self) -> torch.Tensor:
        """h with each log-ratio divided by its answer's token count: (pi_c - ref_c)/n_c - (pi_r - ref_r)/n_r."""
        chosen = (self.policy_chosen - self.reference_chosen) / self.chosen_tokens.clamp(min=1)
        rejected = (self.policy_rejected - self.reference_rejected) / self.rejected_tokens.clamp(min=1)
        return chosen - rejected

    def reward_gap(self) -> torch.Tensor:
        """r*(x, y+) - r*(x, y-), (P,); RPO needs reward values on every pair."""
        if self.chosen_reward is None or self.rejected_reward is None:
            raise ValueError("this loss needs reward values on the pairs (chosen_reward and rejected_reward)")
        return self.chosen_reward - self.rejected_reward


# ---- the DPO family --------------------------------------------------------------------------------


def dpo_loss(logps: PairLogps, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, "Direct Preference Optimization"): L = -log sigmoid(beta * h).

    The Bradley-Terry likelihood of the preference under the implicit reward beta * log(pi / ref).
    """
    return -F.logsigmoid(beta * logps.logratio_gap())


def cdpo_loss(logps: PairLogps, beta: float, label_smoothing: float) -> torch.Tensor:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences"): labels flipped with prob. eps.

    L = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h): the cross entropy against a
    smoothed label. Its minimum is at a finite margin (sigmoid(beta h) = 1 - eps), not at infinity.
    """
    z = beta * logps.logratio_gap()
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def rdpo_loss(logps: PairLogps, beta: float, label_smoothing: float) -> torch.Tensor:
    """Robust DPO (Chowdhury et al. 2024, "Provably Robust DPO"): unbiased under labels flipped with prob. eps.

    L = [-(1 - eps) log sigmoid(beta h) + eps log sigmoid(-beta h)] / (1 - 2 eps), eps < 1/2. In
    expectation over the label noise it equals the DPO loss on clean labels (cDPO does not).
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"rdpo needs label_smoothing in [0, 0.5), got {label_smoothing}")
    z = beta * logps.logratio_gap()
    return (-(1.0 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1.0 - 2.0 * label_smoothing)


def ipo_loss(logps: PairLogps, beta: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences").

    L = (h_norm - 1 / (2 beta))^2, a squared regression of the log-ratio gap onto a fixed target, so
    the margin cannot run off to infinity on deterministic preferences. LENGTH-NORMALISED: h_norm
    divides each log-ratio by its answer's token count (as TRL's implementation does), so the target
    1/(2 beta) is per token and does not depend on answer length.
    """
    return (logps.normalised_logratio_gap() - 1.0 / (2.0 * beta)) ** 2


def dpo_length_normalised_loss(logps: PairLogps, beta: float) -> torch.Tensor:
    """Length-normalised DPO (Tulu 3, Lambert et al. 2024, "dpo_norm"): L = -log sigmoid(beta * h_norm).

    h_norm divides each log-ratio by its answer's token count, so a long answer does not get a
    larger implicit reward for its length alone.
    """
    return -F.logsigmoid(beta * logps.normalised_logratio_gap())


def simpo_loss(logps: PairLogps, beta: float, gamma: float) -> torch.Tensor:
    """SimPO (Meng, Xia & Chen 2024, "Simple Preference Optimization"): reference-free, length-normalised.

    L = -log sigmoid(beta * (pi_c / n_c - pi_r / n_r) - gamma): the average log-prob is the reward,
    gamma a target margin. The reference log-probs are not used (no reference pass is needed).
    """
    margin = logps.policy_chosen / logps.chosen_tokens.clamp(min=1) - logps.policy_rejected / logps.rejected_tokens.clamp(min=1)
    return -F.logsigmoid(beta * margin - gamma)


def chosen_nll(logps: PairLogps, nll_normalisation: str) -> torch.Tensor:
    """NLL of the chosen answer, (P,): per_token = -pi_c / n_c (mean over its tokens); per_sequence = -pi_c."""
    if nll_normalisation == "per_token":
        return -logps.policy_chosen / logps.chosen_tokens.clamp(min=1)
    if nll_normalisation == "per_sequence":
        return -logps.policy_chosen
    raise ValueError(f"nll_normalisation must be 'per_token' or 'per_sequence', got {nll_normalisation!r}")


def dpo_nll_loss(logps: PairLogps, beta: float, nll_weight: float, nll_normalisation: str) -> torch.Tensor:
    """DPO + NLL on the chosen answer (Pang et al. 2024, "Iterative Reasoning Preference Optimization";
    Llama 3 and Nemotron-4 add it; TRL once called the weight `rpo_alpha`, unrelated to Nemotron's RPO).

    L = -log sigmoid(beta h) + alpha * NLL(y+), NLL per token (-pi_c / n_c, Llama 3's "normalised
    NLL") or per sequence (-pi_c). Keeps the chosen log-prob from falling while the margin grows.
    """
    return dpo_loss(logps, beta) + nll_weight * chosen_nll(logps, nll_normalisation)


# ---- reward-aware preference optimisation (Nemotron-4 340B, Adler et al. 2024) --------------------
# a = beta * h, the policy's implicit reward gap; b = eta * (r*(x, y+) - r*(x, y-)), the reward model's.
# RPO makes a match b under a distance D, so pairs of nearly equal quality do not get pushed apart as
# hard as clear-cut ones (DPO pushes every pair's margin to infinity).


def _rpo_gaps(logps: PairLogps, beta: float, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    return beta * logps.logratio_gap(), eta * logps.reward_gap()


def _bernoulli_kl(log_p: torch.Tensor, log_1mp: torch.Tensor, log_q: torch.Tensor, log_1mq: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(p) || Bernoulli(q)) = p log(p/q) + (1-p) log((1-p)/(1-q)), from log-probabilities."""
    return log_p.exp() * (log_p - log_q) + log_1mp.exp() * (log_1mp - log_1mq)


def rpo_sq_loss(logps: PairLogps, beta: float, eta: float) -> torch.Tensor:
    """RPO with squared distance (Nemotron-4 340B, Adler et al. 2024): L = (a - b)^2."""
    a, b = _rpo_gaps(logps, beta, eta)
    return (a - b) ** 2


def rpo_bwd_kl_loss(logps: PairLogps, beta: float, eta: float) -> torch.Tensor:
    """RPO with the backward KL (the form the Nemotron-4 340B report uses): KL(Bern(sigmoid b) || Bern(sigmoid a)).

    L = sigmoid(b) log(sigmoid(b) / sigmoid(a)) + (1 - sigmoid(b)) log((1 - sigmoid(b)) / (1 - sigmoid(a))):
    the policy's preference probability sigmoid(a) is fitted to the reward model's sigmoid(b).
    """
    a, b = _rpo_gaps(logps, beta, eta)
    return _bernoulli_kl(F.logsigmoid(b), F.logsigmoid(-b), F.logsigmoid(a), F.logsigmoid(-a))


def rpo_fwd_kl_loss(logps: PairLogps, beta: float, eta: float) -> torch.Tensor:
    """RPO with the forward KL, the two swapped: KL(Bern(sigmoid a) || Bern(sigmoid b)).

    L = sigmoid(a) log(sigmoid(a) / sigmoid(b)) + (1 - sigmoid(a)) log((1 - sigmoid(a)) / (1 - sigmoid(b))).
    """
    a, b = _rpo_gaps(logps, beta, eta)
    return _bernoulli_kl(F.logsigmoid(a), F.logsigmoid(-a), F.logsigmoid(b), F.logsigmoid(-b))


PreferenceLoss = Callable[..., torch.Tensor]

PREFERENCE_LOSSES: dict[str, PreferenceLoss] = {
    "dpo": dpo_loss,
    "cdpo": cdpo_loss,
    "rdpo": rdpo_loss,
    "ipo": ipo_loss,
    "dpo_length_normalised": dpo_length_normalised_loss,
    "simpo": simpo_loss,
    "dpo_nll": dpo_nll_loss,
    "rpo_sq": rpo_sq_loss,
    "rpo_bwd_kl": rpo_bwd_kl_loss,
    "rpo_fwd_kl": rpo_fwd_kl_loss,
}

# Losses whose value does not depend on the reference log-probs: no reference pass is needed.
REFERENCE_FREE_LOSSES = frozenset({"simpo"})
# Losses that read reward values (chosen_reward / rejected_reward) from the pairs.
REWARD_AWARE_LOSSES = frozenset({"rpo_sq", "rpo_bwd_kl", "rpo_fwd_kl"})


def bind_loss(name: str, **hyperparameters: float | str) -> Callable[[PairLogps], torch.Tensor]:
    """PREFERENCE_LOSSES[name] with the hyperparameters it declares taken from `hyperparameters`.

    Hyperparameters a loss does not declare are ignored (a config carries all of them); one it
    declares but that is missing raises.
    """
    if name not in PREFERENCE_LOSSES:
        raise ValueError(f"unknown preference loss {name!r}; known: {', '.join(sorted(PREFERENCE_LOSSES))}")
    fn = PREFERENCE_LOSSES[name]
    wanted = [p for p in inspect.signature(fn).parameters if p != "logps"]
    missing = [p for p in wanted if p not in hyperparameters]
    if missing:
        raise ValueError(f"preference loss {name!r} needs {', '.join(missing)}")
    bound = {p: hyperparameters[p] for p in wanted}
    return lambda logps: fn(logps, **bound)


def preference_metrics(logps: PairLogps, beta: float) -> dict[str, torch.Tensor]:
    """Per-pair diagnostics, each (P,), detached: DPO's implicit rewards beta * (pi - ref), their margin,
    whether the chosen one is higher (reward accuracy), and the policy's chosen / rejected log-probs
    (both typically fall during DPO; only their gap is trained)."""
    with torch.no_grad():
        chosen = beta * (logps.policy_chosen - logps.reference_chosen)
        rejected = beta * (logps.policy_rejected - logps.reference_rejected)
        return {
            "reward_accuracy": (chosen > rejected).float(),
            "chosen_reward": chosen,
            "rejected_reward": rejected,
            "reward_margin": chosen - rejected,
            "chosen_logp": logps.policy_chosen.detach().float(),
            "rejected_logp": logps.policy_rejected.detach().float(),
        }
