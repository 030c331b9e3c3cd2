"""NEFTune (Jain et al. 2023, "NEFTune: Noisy Embeddings Improve Instruction Finetuning").

During training, add uniform noise U(-1, 1) * alpha / sqrt(L * d) to the input embeddings, where
L is the sequence length and d the hidden size; evaluation and generation see clean embeddings.
On a packed row, L is the row's length (the sequences in it share one forward pass), so the noise
per token is that of one sequence of the row's total length.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


def neftune_noise(embeddings: torch.Tensor, alpha: float) -> torch.Tensor:
    """The noise NEFTune adds to (B, L, d) embeddings: uniform in +-alpha / sqrt(L * d)."""
    length, dim = embeddings.shape[-2], embeddings.shape[-1]
    scale = alpha / math.sqrt(length * dim)
    return torch.zeros_like(embeddings).uniform_(-scale, scale)  # (B, L, d)


def add_neftune(model: nn.Module, alpha: float) -> RemovableHandle:
    """Register a forward hook on the input embeddings that adds NEFTune noise in training mode only."""
    embedding = model.get_input_embeddings()

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        return output + neftune_noise(output, alpha)

    return embedding.register_forward_hook(hook)
