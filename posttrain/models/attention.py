"""Variable-length attention for packed rows: each sequence attends only to itself, with no mask.

With sdpa, transformers masks a packed row with a dense (T, T) mask and computes every score, masked or
not; the masked kernels also cannot use flash attention. PyTorch's `torch.nn.attention.varlen.varlen_attn`
runs flash attention over the concatenated sequences given their boundaries (`cu_seqlens`, the
flash-attention convention), so a packed row costs what its sequences cost alone: on one H200, DPO on a
Qwen2-0.5B shape ran 1.9x faster with it than with masked rows (benchmarks/README.md).

How it is wired into transformers: `VARLEN` is registered in transformers' `AttentionInterface`
(and deliberately not in its mask interface, so no mask is built at all), and `packed_forward`
switches a model to it for one forward, passing the boundaries as the flash-attention keyword
arguments (`cu_seq_lens_q`, `max_length_q`, ...) that every decoder layer hands on to its attention
function. Generation and padded batches keep the model's own attention.

When it is used (`varlen_enabled`): on CUDA, with a half-precision compute dtype (autocast or
weights; flash attention has no float32 kernel), when torch provides `varlen_attn`, unless
`POSTTRAIN_ATTENTION=sdpa`. Elsewhere packed rows go through sdpa as before. Off CUDA,
`POSTTRAIN_ATTENTION=varlen` computes each sequence with sdpa in a loop: the exact reference the
tests compare the wiring against.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

VARLEN = "posttrain_varlen"
ATTENTION_ENV = "POSTTRAIN_ATTENTION"  # auto (default) | sdpa | varlen
HALF_DTYPES = (torch.bfloat16, torch.float16)


def _kernel() -> Any | None:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


@functools.lru_cache(maxsize=None)
def _kernel_parameters() -> frozenset[str]:
    return frozenset(inspect.signature(_kernel()).parameters)


def _kernel_arguments(scaling: float | None, head_dim: int, grouped: bool) -> dict[str, Any]:
    """Causal attention, the scale and grouped KV heads, as this torch's varlen_attn takes them (its
    signature changed across releases; where it has no `enable_gqa`, flash attention groups heads natively)."""
    parameters = _kernel_parameters()
    arguments: dict[str, Any] = {"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True}
    if grouped and "enable_gqa" in parameters:
        arguments["enable_gqa"] = True
    if "scale" in parameters:
        arguments["scale"] = scaling
    elif scaling is not None and abs(scaling - head_dim ** -0.5) > 1e-9:
        raise ValueError(f"this torch's varlen_attn has no scale argument; the model scales by {scaling}")
    return arguments


def _compute_dtype(model: nn.Module, device: torch.device) -> torch.dtype:
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return next(model.parameters()).dtype


def varlen_enabled(model: nn.Module, device: torch.device) -> bool:
    """Whether packed forwards of `model` on `device` use variable-length flash attention (see the module doc)."""
    choice = os.environ.get(ATTENTION_ENV, "auto")
    if choice not in ("auto", "sdpa", "varlen"):
        raise ValueError(f"{ATTENTION_ENV}={choice!r}: choose auto, sdpa or varlen")
    if choice == "sdpa":
        return False
    usable = device.type == "cuda" and _kernel() is not None and _compute_dtype(model, device) in HALF_DTYPES
    if choice == "varlen" and device.type == "cuda" and not usable:
        raise ValueError(f"{ATTENTION_ENV}=varlen on CUDA needs torch's varlen_attn and a bf16/fp16 compute dtype")
    return usable or (choice == "varlen" and device.type != "cuda")


def _sequence_by_sequence(query, key, value, cu_seqlens, scaling) -> torch.Tensor:
    """(T, Hq, D) causal attention of each sequence on its own, with sdpa (the CPU path, and the reference)."""
    out = torch.empty_like(query)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q, k, v = (x[start:end].transpose(0, 1) for x in (query, key, value))  # (H, t, D)
        out[start:end] = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, scale=scaling, enable_gqa=k.shape[0] != q.shape[0]
        ).transpose(0, 1)
    return out


def varlen_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query (1, Hq, T, D), key/value (1, Hkv, T, D) -> (1, T, Hq, D)."""
    cu_seqlens, max_length = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu_seqlens is None or max_length is None:
        raise ValueError(f"{VARLEN} attention needs cu_seq_lens_q and max_length_q (use models.attention.packed_forward)")
    if query.shape[0] != 1 or attention_mask is not None:
        raise ValueError(f"{VARLEN} attention takes one packed row and no mask, got batch {query.shape[0]}")
    if dropout or sliding_window or getattr(module, "attn_logit_softcapping", None):
        raise ValueError(f"{VARLEN} attention does not do dropout, sliding windows or logit soft-capping")
    q, k, v = (x[0].transpose(0, 1).contiguous() for x in (query, key, value))  # (T, H, D)
    if q.is_cuda:  # flash attention takes bf16/fp16 only; under autocast RoPE leaves q and k in float32
        half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else v.dtype
        q, k, v = (x.to(half) for x in (q, k, v))
        out = _kernel()(q, k, v, cu_seqlens, cu_seqlens, max_length, max_length, **_kernel_arguments(scaling, q.shape[-1], k.shape[1] != q.shape[1]))
    else:
        out = _sequence_by_sequence(q, k, v, cu_seqlens, scaling)
    return out.unsqueeze(0), None


@contextlib.contextmanager
def _attention_implementation(model: nn.Module, name: str) -> Iterator[None]:
    config = model.config
    previous = config._attn_implementation
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_forward(model: nn.Module, base: nn.Module, seq_lens: list[int], device: torch.device, **inputs) -> Any:
    """`model(**inputs)` over one packed row of sequences of `seq_lens` tokens, with VARLEN attention where
    `varlen_enabled`, else as it is (transformers then masks across the position-id restarts).

    `model` is what is called (it may be a DDP/PEFT wrapper, or a decoder), `base` the transformers model
    whose config selects the attention. inputs must hold `position_ids` restarting per sequence.
    """
    if not varlen_enabled(base, device):
        return model(**inputs)
    cu_seqlens = torch.zeros(len(seq_lens) + 1, dtype=torch.int32)
    cu_seqlens[1:] = torch.tensor(seq_lens, dtype=torch.int32).cumsum(0)
    cu_seqlens = cu_seqlens.to(device, non_blocking=True)
    longest = max(seq_lens)
    with _attention_implementation(base, VARLEN):
        return model(**inputs, cu_seq_lens_q=cu_seqlens, cu_seq_lens_k=cu_seqlens,
                     max_length_q=longest, max_length_k=longest)


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(VARLEN, varlen_attention_forward)


_register()
