import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_WORDS = "user assistant system what is the sum answer has coins more how many refuse"


@pytest.fixture(scope="session")
def make_chat_model(tmp_path_factory):
    """A builder of tiny random-init chatml Llamas saved as HF directories (a fresh directory per call).

    The tokenizer is a 300-token byte-level BPE trained on `words` (a module picks words its prompts
    use, so they tokenize to few ids); `max_positions` goes into the model config.
    """

    def build(words: str = CHAT_WORDS, seed_words: tuple[str, ...] = ("answer", "coins"),
              max_positions: int = 512) -> Path:
        from posttrain.data.bpe import train_bytelevel_bpe
        from posttrain.models.loading import random_init_causal_lm, save_causal_lm

        tokenizer = train_bytelevel_bpe([words] * 20, 300, "chatml", seed_words=list(seed_words))
        model = random_init_causal_lm("llama", vocab_size=len(tokenizer), hidden_size=32, num_layers=2, num_heads=4,
                                      num_kv_heads=2, intermediate_size=64, max_position_embeddings=max_positions,
                                      seed=0)
        return save_causal_lm(model, tokenizer, tmp_path_factory.mktemp("chat") / "model")

    return build


@pytest.fixture(scope="module")
def chat_model(make_chat_model) -> Path:
    """The default tiny chat model, built once per test module (a module may override it)."""
    return make_chat_model()
