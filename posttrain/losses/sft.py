"""Supervised fine-tuning: token-level negative log-likelihood of the target (assistant) tokens."""
from __future__ import annotations

import torch


def sft_loss(
    token_logprobs: torch.Tensor, loss_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Summed NLL over masked tokens: loss_sum = -sum_t mask_t * log p(y_t | y_<t).

    Returns (loss_sum, n_tokens, metrics). The mean (loss_sum / n_tokens) is taken by the caller over
    ALL tokens of an optimizer step, so every target token weighs the same however sequences are
    split into micro-batches (per-sequence or per-micro-batch means would weigh short ones more).

    token_logprobs: (B, T) float, log p of each position's target; loss_mask: (B, T) bool or 0/1.
    """
    mask = loss_mask.to(token_logprobs.dtype)  # (B, T)
    loss_sum = -(token_logprobs * mask).sum()
    n_tokens = mask.sum()
    return loss_sum, n_tokens, {"num_loss_tokens": n_tokens.detach()}
