"""Tiny random models and tokenizers for the generation tests (offline, float32, one thread)."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from posttrain.data.bpe import train_bytelevel_bpe

VOCAB = 300


def tiny_model(seed: int = 0, eos_token_id=VOCAB - 1, vocab_size: int = VOCAB) -> LlamaForCausalLM:
    """A 2-layer Llama with random weights; `eos_token_id` lands in its generation_config."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        eos_token_id=eos_token_id, pad_token_id=None, bos_token_id=None,
    )
    return LlamaForCausalLM(config).float().eval()


def word_tokenizer() -> PreTrainedTokenizerFast:
    """Token i decodes to 'w{i}' (words joined by spaces): readable text for stop-string tests."""
    vocab = {f"w{i}": i for i in range(VOCAB)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def chat_tokenizer(template: str = "chatml") -> PreTrainedTokenizerFast:
    """posttrain's byte-level BPE (about 300 tokens) with one of posttrain's chat templates installed."""
    corpus = ["user assistant system tool_call tool_response name arguments the answer is", "add 1 2 3"] * 20
    return train_bytelevel_bpe(corpus, VOCAB, template, seed_words=["add", "alpha", "beta"])
