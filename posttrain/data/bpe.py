"""Train a small byte-level BPE tokenizer with a chat template installed (the tiny world's tokenizer).

Byte-level: the 256 byte symbols are all in the vocabulary, so any text encodes and decodes back
exactly, and there is no unknown token. The `tokenizers` trainer is deterministic for the same
input; the template's special tokens take the first ids, in the template's order.
"""
from __future__ import annotations

from typing import Iterable, Iterator

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from posttrain.data.chat_templates import get_template, install_template

BYTE_ALPHABET_SIZE = 256


def _with_seed_words(texts: Iterable[str], seed_words: list[str], weight: int) -> Iterator[str]:
    """The corpus, then each seed word `weight` times alone and `weight` times after a space.

    Newlines separate the bare copies: a lone newline is its own pre-token, so it adds no pairs.
    """
    yield from texts
    for word in seed_words:
        yield "\n".join([word] * weight)
        yield (" " + word) * weight


# GPT-2's split with one change: every digit is its own pre-token, never joined to the space before
# it (Qwen2 and Llama 2 split digits so too). ' 86' and '"86' then share the tokens '8' '6', so a
# question's number is copied token for token into a tool call's JSON; with GPT-2's split they are
# two unrelated tokens (' 86' vs '86'), a pairing a small model learns for words but not for numbers.
SINGLE_DIGITS = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def train_bytelevel_bpe(texts: Iterable[str], vocab_size: int, template: str,
                        seed_words: Iterable[str] | None = None,
                        single_digits: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE of `vocab_size` tokens (specials included) trained on `texts`, template installed.

    `seed_words` (e.g. tool names, role names) are added to the corpus with a weight of one
    occurrence per text, so that they are learnt as whole tokens if the vocabulary has room; it is
    a strong nudge, not a guarantee. The result holds fewer than `vocab_size` tokens when the corpus
    runs out of pairs to merge. `single_digits`: numbers split into digits (SINGLE_DIGITS).
    """
    spec = get_template(template)
    minimum = BYTE_ALPHABET_SIZE + len(spec.special_tokens)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size {vocab_size} < {minimum}: "
                         f"256 bytes + {len(spec.special_tokens)} special tokens")
    corpus = list(texts)
    words = list(seed_words or [])

    bpe = Tokenizer(models.BPE())
    # GPT-2's split into words/numbers/punctuation, no prefix space: what byte-level BPE decodes back exactly.
    if single_digits:
        split = pre_tokenizers.Split(Regex(SINGLE_DIGITS), behavior="isolated")
        bpe.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                                                      use_regex=False)])
    else:
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,  # a pair seen once is noise, not a token
        special_tokens=list(spec.special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_with_seed_words(corpus, words, weight=max(2, len(corpus))), trainer=trainer)

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe)
    return install_template(tokenizer, template)
