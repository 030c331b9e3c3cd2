"""Chat templates: pinned renderings, install/detect, end-of-turn ids, save/load round trip."""
import os
import tempfile

import jinja2
import pytest
import torch
from transformers import AutoTokenizer

from posttrain.data.bpe import train_bytelevel_bpe
from posttrain.data.chat_templates import TEMPLATES, detect_template, end_of_turn_ids, install_template

torch.set_num_threads(1)

CORPUS = ["the cat sees the dog", "hello there, it is 5.", "add one and two"] * 20
TOOLS = [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]


def call(arguments):
    return {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                                                 "function": {"name": "calc", "arguments": arguments}}]}


TOOL_CHAT = [{"role": "user", "content": "add"}, call({"a": 1}),
             {"role": "tool", "tool_call_id": "c1", "content": "5"}, {"role": "assistant", "content": "5."}]


@pytest.fixture(scope="module")
def tokenizers():
    return {name: train_bytelevel_bpe(CORPUS, 300, name) for name in TEMPLATES}


def render(tokenizer, messages, **kwargs):
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": " Hello. "}]


@pytest.mark.parametrize("name,expected", [
    ("chatml", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n"
               "<|im_start|>assistant\n Hello. <|im_end|>\n"),
    ("llama3", "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
               "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>"
               "<|start_header_id|>user<|end_header_id|>\n\nHi!<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>"),
    ("gemma", "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"),
])
def test_plain_rendering(tokenizers, name, expected):
    assert render(tokenizers[name], CHAT) == expected


@pytest.mark.parametrize("name,header", [
    ("chatml", "<|im_start|>assistant\n"),
    ("llama3", "<|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("gemma", "<start_of_turn>model\n"),
])
def test_generation_prompt_appends_the_assistant_header(tokenizers, name, header):
    without = render(tokenizers[name], CHAT[:2])
    assert render(tokenizers[name], CHAT[:2], add_generation_prompt=True) == without + header


def test_chatml_without_system_has_no_default_prompt(tokenizers):
    assert render(tokenizers["chatml"], CHAT[1:2]) == "<|im_start|>user\nHi!<|im_end|>\n"


CHATML_TOOLS = (
    "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nadd<|im_end|>\n"
    '<|im_start|>assistant\n<tool_call>\n{"name": "calc", "arguments": {"a": 1}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n6\n</tool_response><|im_end|>\n"
    "<|im_start|>assistant\n5.<|im_end|>\n"
)


def test_chatml_tools_follow_qwen25(tokenizers):
    two_results = TOOL_CHAT[:3] + [{"role": "tool", "tool_call_id": "c1", "content": "6"}] + TOOL_CHAT[3:]
    assert render(tokenizers["chatml"], two_results, tools=TOOLS) == CHATML_TOOLS


def test_chatml_system_prompt_precedes_the_tool_list(tokenizers):
    text = render(tokenizers["chatml"], [{"role": "system", "content": "Be brief."}] + TOOL_CHAT, tools=TOOLS)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n\n")


def test_chatml_content_and_two_calls(tokenizers):
    message = {"role": "assistant", "content": "Let me add.", "tool_calls": [
        {"id": f"c{i}", "type": "function", "function": {"name": "calc", "arguments": {"a": i}}} for i in (1, 2)]}
    text = render(tokenizers["chatml"], [TOOL_CHAT[0], message], tools=TOOLS)
    assert text.endswith('<|im_start|>assistant\nLet me add.\n<tool_call>\n{"name": "calc", "arguments": {"a": 1}}\n'
                         '</tool_call>\n<tool_call>\n{"name": "calc", "arguments": {"a": 2}}\n</tool_call><|im_end|>\n')


LLAMA3_TOOLS = (
    "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with a JSON for a "
    "function call with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
    '{\n    "type": "function",\n    "function": {\n        "name": "calc",\n        "parameters": {\n'
    '            "type": "object"\n        }\n    }\n}\n\nadd<|eot_id|>'
    '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "calc", "parameters": {"a": 1}}<|eot_id|>'
    "<|start_header_id|>ipython<|end_header_id|>\n\n5<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n5.<|eot_id|>"
)


def test_llama3_tools_follow_llama31(tokenizers):
    assert render(tokenizers["llama3"], TOOL_CHAT, tools=TOOLS) == LLAMA3_TOOLS


@pytest.mark.parametrize("name", ["chatml", "llama3"])
def test_arguments_as_json_string_render_like_a_dict(tokenizers, name):
    as_string = [TOOL_CHAT[0], call('{"a": 1}')] + TOOL_CHAT[2:]
    assert render(tokenizers[name], as_string, tools=TOOLS) == render(tokenizers[name], TOOL_CHAT, tools=TOOLS)


@pytest.mark.parametrize("messages,tools,match", [
    (CHAT[1:], TOOLS, "tools are not supported"),
    (TOOL_CHAT, None, "tool calls and tool messages"),
    ([CHAT[1], CHAT[1]], None, "alternate"),
])
def test_gemma_template_raises_on_what_it_cannot_express(tokenizers, messages, tools, match):
    with pytest.raises(jinja2.exceptions.TemplateError, match=match):
        render(tokenizers["gemma"], messages, tools=tools)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_install_sets_distinct_special_tokens(tokenizers, name):
    tokenizer, spec = tokenizers[name], TEMPLATES[name]
    assert tokenizer.chat_template == spec.source
    assert tokenizer.bos_token == spec.bos_token and tokenizer.eos_token == spec.eos_token
    assert tokenizer.pad_token == spec.pad_token
    assert tokenizer.pad_token_id not in end_of_turn_ids(tokenizer, name)
    # special tokens are never split and are skipped when decoding
    eot = spec.end_of_turn
    assert tokenizer.encode(eot, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(eot)]
    assert tokenizer.decode(tokenizer.encode("the cat" + eot), skip_special_tokens=True) == "the cat"


def test_end_of_turn_ids_put_the_turn_end_first(tokenizers):
    gemma = tokenizers["gemma"]
    assert end_of_turn_ids(gemma, "gemma") == [gemma.convert_tokens_to_ids("<end_of_turn>"), gemma.eos_token_id]
    chatml = tokenizers["chatml"]
    assert end_of_turn_ids(chatml, "chatml") == [chatml.convert_tokens_to_ids("<|im_end|>")]
    with pytest.raises(ValueError, match="install_template"):
        end_of_turn_ids(chatml, "llama3")


def test_install_is_idempotent_and_adds_only_missing_tokens():
    tokenizer = train_bytelevel_bpe(CORPUS, 300, "chatml")
    size = len(tokenizer)
    install_template(tokenizer, "chatml")
    assert len(tokenizer) == size
    install_template(tokenizer, "gemma")  # a second format's tokens are appended after the vocabulary
    assert len(tokenizer) == size + len(TEMPLATES["gemma"].special_tokens)
    assert tokenizer.convert_tokens_to_ids("<start_of_turn>") >= size
    assert detect_template(tokenizer) == "gemma"


def test_detect_by_installed_template_then_by_marker(tokenizers):
    for name, tokenizer in tokenizers.items():
        assert detect_template(tokenizer) == name
    llama = tokenizers["llama3"]
    saved, llama.chat_template = llama.chat_template, None
    try:
        assert detect_template(llama) == "llama3"
    finally:
        llama.chat_template = saved
    with pytest.raises(ValueError, match="unknown chat template"):
        install_template(llama, "vicuna")


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_save_and_reload_render_identically(tokenizers, name):
    tokenizer = tokenizers[name]
    chat = CHAT if name == "gemma" else TOOL_CHAT
    tools = None if name == "gemma" else TOOLS
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        with open(os.path.join(folder, "chat_template.jinja"), encoding="utf-8") as handle:
            assert handle.read() == TEMPLATES[name].source
        reloaded = AutoTokenizer.from_pretrained(folder)
    assert reloaded.chat_template == TEMPLATES[name].source
    assert reloaded.apply_chat_template(chat, tools=tools)["input_ids"] == \
        tokenizer.apply_chat_template(chat, tools=tools)["input_ids"]
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == (
        tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert detect_template(reloaded) == name
