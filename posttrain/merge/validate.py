"""Checks that checkpoints can be merged, from configs and safetensors headers only, before any tensor is read.

Every error names the checkpoint and, for tensors, the tensor.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from posttrain.merge.checkpoint import Checkpoint
from posttrain.merge.methods import METHODS, MergeParams

# config fields that must agree for tensors of the same name to mean the same thing
ARCHITECTURE_FIELDS = (
    "model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "intermediate_size", "vocab_size", "tie_word_embeddings",
)


class MergeValidationError(ValueError):
    """The inputs cannot be merged; the message says which checkpoint and tensor."""


def _text_config(config: dict) -> dict:
    return config.get("text_config", config)


def check_method(method: str, models: int, has_base: bool, params: MergeParams) -> None:
    """The method exists and gets the models, base and parameters it needs."""
    if method not in METHODS:
        raise MergeValidationError(f"unknown merge method {method!r}; choose one of {', '.join(METHODS)}")
    spec = METHODS[method]
    if models < spec.min_models or (spec.max_models is not None and models > spec.max_models):
        wanted = spec.min_models if spec.max_models == spec.min_models else f"at least {spec.min_models}"
        raise MergeValidationError(f"{method} merges {wanted} models; got {models}")
    if spec.base == "required" and not has_base:
        raise MergeValidationError(f"{method} works on task vectors and needs a base model")
    if spec.base == "unused" and has_base:
        raise MergeValidationError(f"{method} does not use a base model; remove it (or use task_arithmetic)")
    if params.weights is not None and len(params.weights) != models:
        raise MergeValidationError(f"{len(params.weights)} weights for {models} models")
    if not 0.0 < params.density <= 1.0:
        raise MergeValidationError(f"density {params.density} is outside (0, 1]")


def check_compatible(checkpoints: Sequence[Checkpoint]) -> None:
    """Same architecture, the same tensor names with the same shapes, the same vocabulary and tying."""
    first = checkpoints[0]
    reference = _text_config(first.config)
    for other in checkpoints[1:]:
        config = _text_config(other.config)
        for field in ARCHITECTURE_FIELDS:
            if reference.get(field) != config.get(field):
                raise MergeValidationError(
                    f"{first.path} and {other.path} differ in {field}: "
                    f"{reference.get(field)!r} vs {config.get(field)!r}"
                )
        missing = [name for name in first.tensors if name not in other.tensors]
        extra = [name for name in other.tensors if name not in first.tensors]
        if missing or extra:
            name, holder, lacking = (missing[0], first, other) if missing else (extra[0], other, first)
            raise MergeValidationError(
                f"tensor {name} is in {holder.path} but not in {lacking.path} "
                f"({len(missing)} missing, {len(extra)} extra tensors in all)"
            )
        for name, info in first.tensors.items():
            if other.tensors[name].shape != info.shape:
                raise MergeValidationError(
                    f"tensor {name} has shape {list(info.shape)} in {first.path} "
                    f"but {list(other.tensors[name].shape)} in {other.path}"
                )
            if other.tensors[name].dtype.is_floating_point != info.dtype.is_floating_point:
                raise MergeValidationError(
                    f"tensor {name} is {info.dtype} in {first.path} but {other.tensors[name].dtype} in {other.path}"
                )
        _check_tokenizer_sizes(first.path, other.path)


def tokenizer_vocab_size(model_dir: Path) -> int | None:
    """1 + the largest token id in tokenizer.json (vocabulary and added tokens), or None without one."""
    path = Path(model_dir) / "tokenizer.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    vocab = (data.get("model") or {}).get("vocab") or {}
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # Unigram: a list
    ids += [token["id"] for token in data.get("added_tokens", [])]
    return max(ids) + 1 if ids else 0


def _check_tokenizer_sizes(first: Path, other: Path) -> None:
    sizes = tokenizer_vocab_size(first), tokenizer_vocab_size(other)
    if None not in sizes and sizes[0] != sizes[1]:
        raise MergeValidationError(
            f"the tokenizers of {first} ({sizes[0]} tokens) and {other} ({sizes[1]} tokens) differ in size; "
            "token ids would not line up"
        )
