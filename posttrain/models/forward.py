"""Decoder forward passes on packed and padded batches, returning final hidden states (no logits).

Packed rows are run with `position_ids` restarting per sequence, `use_cache=False` and NO attention
mask. transformers 5 (masking_utils._preprocess_mask_arguments) only looks for packed sequences
when the 2-D attention mask is None AND there is no cache; it then splits the row where consecutive
position ids do not step by +1 and masks attention across the pieces (sdpa and eager). With the
default `use_cache` (config.use_cache is True) a DynamicCache is created, the check is skipped, and
every sequence silently attends to the ones packed before it; an all-ones mask does the same.

The call goes through the model's own forward (so DDP's gradient hooks, torch.compile and PEFT
adapters all apply), asking for the last hidden state only and logits for zero positions: the
LM head is applied later, chunk by chunk, in `posttrain.models.logprobs`.
"""
from __future__ import annotations

import torch
from torch import nn

from posttrain.data.packing import PackedBatch, PaddedBatch
from posttrain.models.attention import packed_forward

_NO_LOGIT_POSITIONS = torch.zeros(0, dtype=torch.long)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside DDP / FSDP1 (`.module`), torch.compile (`._orig_mod`) and PEFT wrappers.

    PEFT injects its adapter layers into the base model in place, so the unwrapped model still runs
    them. Use it to reach config, heads and weights; call the wrapper itself for forward passes.
    """
    while True:
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel) or (
            type(model).__name__ in {"DistributedDataParallel", "FullyShardedDataParallel"} and hasattr(model, "module")
        ):
            model = model.module
        else:
            return model


def lm_head_of(model: nn.Module) -> nn.Module:
    """The output projection (V, H) of a causal LM, through any wrapper."""
    head = unwrap_model(model).get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no output embeddings (LM head)")
    return head


def decoder_of(model: nn.Module) -> nn.Module:
    """The decoder stack (embeddings, layers, final norm) of a causal LM, through any wrapper."""
    return unwrap_model(model).get_decoder()


def last_hidden_state(model: nn.Module, device: torch.device, seq_lens: list[int] | None = None, **inputs) -> torch.Tensor:
    """The final (post-norm) hidden states of the full model's forward, with no LM-head work: for packed rows
    pass `position_ids` restarting per sequence and no attention mask (see `packed_hidden_states`).

    `seq_lens` (one packed row of sequences of these lengths) lets the forward use variable-length flash
    attention where it can (`models.attention.varlen_enabled`: CUDA, bf16/fp16); otherwise the
    position-id restarts make transformers mask across the sequences.

    They come back in the forward's own output (`hidden_states[-1]`), so that DDP and FSDP see the
    loss depend on their module's output. Every layer's states are returned (`output_hidden_states=True`):
    the index selection `[-1]` exists in some transformers 5.x releases only (5.17 returned None there).
    Under autograd they are saved for backward anyway; a no-grad pass holds them until it returns.
    """
    inputs.update(
        use_cache=False,
        output_hidden_states=True,
        logits_to_keep=_NO_LOGIT_POSITIONS.to(device),  # logits (B, 0, V): no LM head work here
        return_dict=True,
    )
    if seq_lens is None:
        return model(**inputs).hidden_states[-1]
    return packed_forward(model, unwrap_model(model), seq_lens, device, **inputs).hidden_states[-1]


def packed_hidden_states(
    model: nn.Module, batch: PackedBatch, inputs_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """Final hidden states (1, T, H) of a packed row; no token attends across a sequence boundary."""
    if batch.input_ids.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, got input_ids of shape {tuple(batch.input_ids.shape)}")
    tokens = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": batch.input_ids}
    # No attention_mask on purpose: a mask (even all ones) disables transformers' packed-sequence masking.
    return last_hidden_state(model, batch.input_ids.device, batch.seq_lens, **tokens, position_ids=batch.position_ids)


def padded_hidden_states(
    model: nn.Module, batch: PaddedBatch, inputs_embeds: torch.Tensor | None = None
) -> torch.Tensor:
    """Final hidden states (B, T, H) of a right-padded batch; padded positions hold garbage."""
    tokens = {"inputs_embeds": inputs_embeds} if inputs_embeds is not None else {"input_ids": batch.input_ids}
    return last_hidden_state(model, batch.input_ids.device, **tokens, attention_mask=batch.attention_mask)
