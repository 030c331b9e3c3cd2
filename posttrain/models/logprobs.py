"""The one per-token log-prob implementation: SFT, reward models, DPO, RL and distillation all use it.

log p(y_t) = h_t . W[y_t] - logsumexp_v(h_t . W[v]), computed chunk by chunk over tokens, so the
(N, V) float32 logits never exist at once: a chunk's logits live in float32 only while that chunk
is processed, in the forward and again (recomputed) in the backward. With a 152k vocabulary the
naive log_softmax + gather, not the matmuls, dominated a DPO step; see DESIGN.md "Where the time goes".

Memory (N tokens, vocabulary V, hidden H, chunk C):
- naive `log_softmax(hidden @ W.T).gather(...)` keeps the (N, V) float32 log-softmax for backward
  (4NV bytes; 2.5 GB for N=4096, V=152k) plus the (N, V) logits and their gradient while backward runs.
- `token_logprobs` keeps hidden, W, targets and one float32 per token (the logsumexp): no N x V
  tensor; transient (C, V) float32 blocks (a few of them, 4CV bytes each) in forward and backward,
  and, when W needs a gradient, a float32 (V, H) accumulator so chunk sums do not round in bf16.
  tests/models/test_logprobs.py measures the tensors each way saves for backward.
- measured peak process memory of forward + backward, float32 CPU, N=2048, H=256, V=32000, chunk 256
  (glibc told to return freed blocks, MALLOC_MMAP_THRESHOLD_=65536): naive 759 MiB, chunked 106 MiB,
  at 1.1-1.4x the time (one more head matmul per chunk, recomputed in backward).
"""
from __future__ import annotations

import torch
from torch import nn

from posttrain.data.packing import IGNORE_INDEX, PackedBatch, PaddedBatch
from posttrain.models.forward import lm_head_of, packed_hidden_states

DEFAULT_CHUNK_SIZE = 1024


def shifted_targets(batch: PackedBatch | PaddedBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, loss_mask), both (B, T): position t predicts token t+1 of its own sequence.

    Targets are the next input ids (valid vocabulary ids everywhere, 0 where nothing follows); the
    mask is True where that next token carries a label. The last position of every sequence
    predicts nothing, so the shift never crosses a packed boundary.
    """
    next_labels = batch.next_token_labels()  # (B, T)
    targets = torch.zeros_like(batch.input_ids)  # (B, T)
    targets[:, :-1] = batch.input_ids[:, 1:]
    if isinstance(batch, PackedBatch):
        targets[:, batch.seq_ends] = 0
    return targets, next_labels != IGNORE_INDEX


def _head_weight_and_bias(lm_head: nn.Module | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(lm_head, torch.Tensor):
        return lm_head, None
    return lm_head.weight, getattr(lm_head, "bias", None)


def _chunk_logits(hidden, weight, bias, inv_temperature: float) -> torch.Tensor:
    """(C, V) float32 logits of one chunk of hidden states (C, H)."""
    logits = hidden @ weight.T  # (C, V) in the model dtype, float32 accumulation inside the matmul
    if bias is not None:
        logits = logits + bias
    logits = logits.float()
    if inv_temperature != 1.0:
        logits = logits * inv_temperature
    return logits


class _ChunkedTokenLogprobs(torch.autograd.Function):
    """Chunked log-softmax-gather whose backward recomputes each chunk's logits instead of storing them.

    d logp_t / d logits_t = onehot(y_t) - softmax(logits_t); the softmax is rebuilt from the saved
    logsumexp, so backward costs one more head matmul per chunk and no stored (N, V) tensor.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk_size: int, inv_temperature: float):
        # Backward runs outside the caller's autocast; it re-enters it, so that its three head matmuls per
        # chunk run in the forward's compute dtype (bf16 on GPU) and not in the float32 of the weights.
        device_type = hidden.device.type
        ctx.autocast = (device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type))
        logprobs = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # (N,)
        lse = torch.empty_like(logprobs)  # (N,)
        for start in range(0, hidden.shape[0], chunk_size):
            end = start + chunk_size
            logits = _chunk_logits(hidden[start:end], weight, bias, inv_temperature)  # (C, V)
            lse[start:end] = torch.logsumexp(logits, dim=-1)
            picked = logits.gather(1, targets[start:end, None]).squeeze(1)  # (C,)
            logprobs[start:end] = picked - lse[start:end]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size, ctx.inv_temperature = chunk_size, inv_temperature
        return logprobs

    @staticmethod
    def backward(ctx, grad_logprobs):
        device_type, enabled, dtype = ctx.autocast
        with torch.autocast(device_type, dtype=dtype, enabled=enabled):
            return _ChunkedTokenLogprobs._backward(ctx, grad_logprobs, enabled)

    @staticmethod
    def _backward(ctx, grad_logprobs, autocast: bool):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # float32 accumulators: summing per-chunk bf16 partials would round once per chunk.
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_bias else None
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            end = start + ctx.chunk_size
            chunk = hidden[start:end]  # (C, H)
            logits = _chunk_logits(chunk, weight, bias, ctx.inv_temperature)  # (C, V)
            grad_logits = logits.sub_(lse[start:end, None]).exp_().neg_()  # (C, V) = -softmax, in place
            grad_logits.scatter_add_(1, targets[start:end, None], torch.ones_like(grad_logits[:, :1]))
            grad_logits *= grad_logprobs[start:end, None].float() * ctx.inv_temperature
            if need_hidden:
                grad_hidden[start:end] = grad_logits.to(weight.dtype) @ weight  # (C, H)
            if need_weight and autocast:  # (V, H) in the compute dtype (float32 accumulation inside), summed in float32
                grad_weight += (grad_logits.T @ chunk).float()
            elif need_weight:
                grad_weight.addmm_(grad_logits.T, chunk.float())  # (V, H)
            if need_bias:
                grad_bias += grad_logits.sum(0)
        grad_weight = grad_weight.to(weight.dtype) if need_weight else None
        grad_bias = grad_bias.to(bias.dtype) if need_bias else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def token_logprobs(
    hidden: torch.Tensor,
    lm_head: nn.Module | torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
) -> torch.Tensor:
    """log p(targets[i] | hidden[i]) under the LM head, (N,) float32; differentiable, chunked.

    hidden: (N, H); lm_head: an nn.Linear (optionally with bias) or its weight (V, H); targets: (N,)
    valid vocabulary ids. `temperature` divides the logits (RL must score with the sampler's).
    """
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected hidden (N, H) and targets (N,), got {tuple(hidden.shape)} and {tuple(targets.shape)}")
    if chunk_size < 1 or temperature <= 0:
        raise ValueError(f"chunk_size must be >= 1 and temperature > 0, got {chunk_size} and {temperature}")
    weight, bias = _head_weight_and_bias(lm_head)
    return _ChunkedTokenLogprobs.apply(
        hidden, weight, bias, targets.long(), chunk_size, 1.0 / temperature
    )


def sequence_logprobs(
    token_lp: torch.Tensor, loss_mask: torch.Tensor, cu_seqlens: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum of masked token log-probs per sequence, (n_seq,) float32.

    Packed: token_lp and loss_mask are (1, T) or (T,) and cu_seqlens (n + 1,) marks the sequences.
    Padded: token_lp and loss_mask are (B, T) and cu_seqlens is None (one sequence per row).
    Dividing by `sequence_logprobs(ones, loss_mask, cu_seqlens)` gives the per-token mean.
    """
    masked = token_lp.float() * loss_mask.to(torch.float32)
    if cu_seqlens is None:
        return masked.sum(dim=-1)
    masked = masked.reshape(-1)  # (T,)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()  # (n,)
    if int(lengths.sum()) != masked.numel():
        raise ValueError(f"cu_seqlens cover {int(lengths.sum())} tokens, token log-probs have {masked.numel()}")
    seq_index = torch.repeat_interleave(torch.arange(len(lengths), device=masked.device), lengths.to(masked.device),
                                        output_size=masked.numel())  # size known: no device sync
    return torch.zeros(len(lengths), dtype=torch.float32, device=masked.device).index_add(0, seq_index, masked)


@torch.no_grad()
def token_entropy(
    hidden: torch.Tensor, lm_head: nn.Module | torch.Tensor, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Entropy of the next-token distribution at each position, (N,) float32, no grad.

    H = -sum_v p_v log p_v over the softmax p of the logits. As costly as a forward of the head: run it on a
    sample of positions or every few steps, not on every token of every step.
    """
    weight, bias = _head_weight_and_bias(lm_head)
    entropy = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)  # (N,)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = _chunk_logits(hidden[start : start + chunk_size], weight, bias, 1.0)  # (C, V)
        log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)  # (C, V)
        # -sum p log p, not lse - sum p z: the latter cancels two large numbers in float32.
        entropy[start : start + chunk_size] = -(log_probs.exp() * log_probs).sum(-1)
    return entropy


def packed_token_logprobs(
    model: nn.Module,
    batch: PackedBatch,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    temperature: float = 1.0,
    all_positions: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token_lp, loss_mask), both (1, T): the model's log-prob of each next token in a packed batch.

    By default the LM head runs only where loss_mask is True (prompt tokens cost no head work) and
    token_lp is 0 elsewhere; `all_positions=True` scores every position that has a next token.
    """
    hidden = packed_hidden_states(model, batch)[0]  # (T, H)
    targets, loss_mask = shifted_targets(batch)  # (1, T) each
    scored = loss_mask[0] if not all_positions else _has_next_token(batch)  # (T,)
    token_lp = torch.zeros(loss_mask.shape[1], dtype=torch.float32, device=hidden.device)  # (T,)
    picked = token_logprobs(hidden[scored], lm_head_of(model), targets[0, scored], chunk_size, temperature)
    token_lp = token_lp.masked_scatter(scored, picked)
    return token_lp.unsqueeze(0), loss_mask


def _has_next_token(batch: PackedBatch) -> torch.Tensor:
    """(T,) True at every position except the last of each sequence."""
    has_next = torch.ones(batch.input_ids.shape[1], dtype=torch.bool, device=batch.input_ids.device)
    has_next[batch.seq_ends] = False
    return has_next
