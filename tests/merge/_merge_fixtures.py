"""Tiny HF model directories for the merge tests: a base and 'fine-tuned' variants (base + seeded noise)."""
from __future__ import annotations

import functools
from pathlib import Path

import torch
from safetensors import safe_open

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
            max_position_embeddings=64)


@functools.lru_cache(maxsize=1)
def tokenizer():
    from posttrain.data.bpe import train_bytelevel_bpe

    return train_bytelevel_bpe(["the cat sat on the mat", "two plus three is five"] * 5, 300, "chatml")


def base_model(seed: int = 0, tie: bool = False, **overrides):
    from posttrain.models.loading import random_init_causal_lm

    config = {**TINY, **overrides}
    return random_init_causal_lm("llama", vocab_size=len(tokenizer()), seed=seed, tie_word_embeddings=tie, **config)


def save(model, out: Path, tok=None) -> Path:
    from posttrain.models.loading import save_causal_lm

    return save_causal_lm(model, tok or tokenizer(), out)


def variant(model, seed: int, scale: float = 0.01):
    """A copy of `model` with seeded noise added to every weight: a stand-in for a fine-tuned run."""
    import copy

    out = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in out.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return out


def read_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF directory (sharded or not)."""
    tensors = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            tensors.update({name: f.get_tensor(name).clone() for name in f.keys()})
    return tensors


def bits(tensor: torch.Tensor) -> bytes:
    """The tensor's exact bytes (bit-identity, signed zeros and NaN payloads included)."""
    return tensor.contiguous().view(torch.uint8).numpy().tobytes()
