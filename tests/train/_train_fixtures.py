"""Shared fixtures of the train tests: a tiny random Llama, a word-level tokenizer, toy SFT examples."""
from __future__ import annotations

import hashlib
import random

import torch

from posttrain.models.loading import random_init_causal_lm

VOCAB = 64


def tiny_model(seed: int = 0, tie: bool = False):
    """A 2-layer Llama with hidden 32 over a 64-token vocabulary, same weights per seed."""
    return random_init_causal_lm(
        "llama", vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
        intermediate_size=64, max_position_embeddings=128, seed=seed, tie_word_embeddings=tie,
        eos_token_id=2, pad_token_id=1,
    )


def tiny_tokenizer():
    """A word-level fast tokenizer with <unk>, <pad>, <eos> and tokens t3..t63 (enough to save HF dirs)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, **{f"t{i}": i for i in range(3, VOCAB)}}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")


def toy_examples(n: int, seed: int, min_len: int = 4, max_len: int = 20) -> list[dict]:
    """Sequences of a learnable pattern (each token = previous + step, mod vocab), loss on the second half."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length, start, step = rng.randint(min_len, max_len), rng.randint(3, VOCAB - 1), rng.randint(1, 3)
        ids = [3 + (start + step * i) % (VOCAB - 3) for i in range(length)]
        mask = [i >= length // 2 for i in range(length)]
        examples.append({"input_ids": ids, "loss_mask": mask})
    return examples


def weights_hash(model_or_state) -> str:
    """sha256 over the exact bytes of every tensor, by name."""
    state = model_or_state if isinstance(model_or_state, dict) else model_or_state.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()
