"""Byte-level BPE trainer: no unknown tokens, deterministic, specials first, template installed, fast."""
import os
import random
import tempfile
import time

import pytest
import torch
from transformers import AutoTokenizer

from posttrain.data.bpe import train_bytelevel_bpe
from posttrain.data.chat_templates import TEMPLATES, end_of_turn_ids

torch.set_num_threads(1)


def sentences(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    nouns = "cat dog bird fish apple river stone cloud tree house".split()
    verbs = "sees eats likes finds moves holds paints counts".split()
    return [f"The {rng.choice(nouns)} {rng.choice(verbs)} {rng.randint(0, 99)} {rng.choice(nouns)}s."
            for _ in range(count)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bytelevel_bpe(sentences(300), 400, "llama3")


def test_every_text_round_trips_without_unknown_tokens(tokenizer):
    texts = ["The cat sees 7 dogs.", "héllo wörld ß", "日本語のテキスト", "emoji 🙂🚀", "\x00\x01\t\r\n \x7f",
             "".join(chr(c) for c in range(32, 127)), "<|eot_id|> is special but <|eot_id is not"]
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token is None
    # all 256 bytes are single tokens, so any byte string is representable
    vocab = tokenizer.get_vocab()
    byte_tokens = {token for token in vocab if len(token) == 1}
    assert len(byte_tokens) >= 256


def test_frequent_words_become_single_tokens(tokenizer):
    assert tokenizer.tokenize(" river") == ["Ġriver"]
    assert tokenizer.tokenize("The cat") == ["The", "Ġcat"]


def test_special_tokens_take_the_first_ids_and_size_is_bounded(tokenizer):
    specials = TEMPLATES["llama3"].special_tokens
    assert [tokenizer.convert_tokens_to_ids(token) for token in specials] == list(range(len(specials)))
    assert len(tokenizer) <= 400
    assert len(tokenizer) > 256 + len(specials)  # merges were learnt


def test_template_installed_with_distinct_pad(tokenizer):
    assert tokenizer.chat_template == TEMPLATES["llama3"].source
    assert tokenizer.pad_token == "<|finetune_right_pad_id|>"
    assert tokenizer.pad_token_id not in end_of_turn_ids(tokenizer, "llama3") + [tokenizer.bos_token_id]
    # no post-processor adds a BOS: the template writes the only one
    assert tokenizer.encode("The cat") == tokenizer.encode("The cat", add_special_tokens=False)


def test_training_is_deterministic_and_depends_on_the_corpus():
    first = train_bytelevel_bpe(sentences(200), 350, "chatml")
    second = train_bytelevel_bpe(sentences(200), 350, "chatml")
    other = train_bytelevel_bpe(sentences(200, seed=1) + ["zebra zebra quartz quartz"] * 30, 350, "chatml")
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert first.get_vocab() != other.get_vocab()


def test_seed_words_are_learnt_whole():
    tokenizer = train_bytelevel_bpe(sentences(200), 350, "gemma", seed_words=["calculator", "assistant"])
    for word in ("calculator", "assistant"):
        assert tokenizer.tokenize(word) == [word]
        assert tokenizer.tokenize(" " + word) == ["Ġ" + word]


def test_small_corpus_trains_fast():
    texts = sentences(400)
    start = time.perf_counter()
    for name in TEMPLATES:
        train_bytelevel_bpe(texts, 500, name)
    assert (time.perf_counter() - start) / len(TEMPLATES) < 1.0


def test_vocab_too_small_for_bytes_and_specials_is_refused():
    with pytest.raises(ValueError, match="256 bytes"):
        train_bytelevel_bpe(sentences(10), 258, "chatml")


def test_saved_tokenizer_reloads_identically(tokenizer):
    text = "The river holds 42 clouds. 日本"
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        assert os.path.exists(os.path.join(folder, "tokenizer.json"))
        reloaded = AutoTokenizer.from_pretrained(folder)
    assert reloaded.encode(text) == tokenizer.encode(text)
    assert reloaded.pad_token_id == tokenizer.pad_token_id and reloaded.eos_token_id == tokenizer.eos_token_id


def test_single_digits_share_tokens_after_a_space_and_after_a_quote():
    split = train_bytelevel_bpe(sentences(300), 400, "llama3", single_digits=True)
    spaced = split.tokenize("The cat sees 86 dogs.")
    quoted = split.tokenize('{"count": "86"}')
    assert spaced[spaced.index("8"):spaced.index("8") + 2] == ["8", "6"]  # the space is a token of its own
    assert quoted[quoted.index("8"):quoted.index("8") + 2] == ["8", "6"]
    for text in ["The cat sees 86 dogs.", "x  123\n\n 4", "héllo 7 wörld 🙂"]:
        assert split.decode(split.encode(text, add_special_tokens=False)) == text
    grouped = train_bytelevel_bpe(sentences(300), 400, "llama3")  # GPT-2's split: ' 86' is not '86'
    assert "8" not in grouped.tokenize("The cat sees 86 dogs.")
