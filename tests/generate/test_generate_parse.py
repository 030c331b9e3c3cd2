"""Parsers read tool calls back exactly as the templates write them; malformed calls stay content."""
from __future__ import annotations

import json

import pytest

from posttrain.data.records import FunctionCall, Message, ToolCall
from posttrain.data.tokenize import normalize_messages
from posttrain.generate.parse import PARSERS, parse_chatml, parse_llama3
from tiny_generate import chat_tokenizer


def call(i: int, name: str, **arguments) -> ToolCall:
    return ToolCall(id=f"call_{i}", function=FunctionCall(name=name, arguments=json.dumps(arguments)))


def args(message: Message) -> list[tuple[str, str, dict]]:
    """(id, name, arguments as a dict) per call: JSON spacing may differ, the object must not."""
    return [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def assistant_text(template: str, reply: Message, header: str, end: str) -> str:
    """What the template writes for `reply`: the text after its assistant header, up to end of turn."""
    rendered = chat_tokenizer(template).apply_chat_template(
        normalize_messages([Message(role="user", content="hi"), reply]), tokenize=False)
    return rendered.split(header, 1)[1].split(end, 1)[0]


def test_chatml_round_trips_through_the_template():
    sent = Message(role="assistant", content="Let me compute.",
                   tool_calls=[call(0, "add", a=1, b=2), call(1, "mul", x=[1, 2], note="é")])
    text = assistant_text("chatml", sent, "<|im_start|>assistant\n", "<|im_end|>")
    assert text.count("<tool_call>") == 2
    got = parse_chatml(text)
    assert got.content == "Let me compute."
    assert args(got) == args(sent)


def test_chatml_calls_only_and_numbering_offset():
    text = '<tool_call>\n{"name": "add", "arguments": {"a": 1}}\n</tool_call>'
    got = parse_chatml(text, first_call_index=3)
    assert got.content is None
    assert args(got) == [("call_3", "add", {"a": 1})]


def test_chatml_accepts_arguments_encoded_twice():
    text = '<tool_call>\n{"name": "add", "arguments": "{\\"a\\": 1}"}\n</tool_call>'
    assert args(parse_chatml(text)) == [("call_0", "add", {"a": 1})]


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "add", "arguments": {"a": 1}\n</tool_call>',  # missing brace
    '<tool_call>\n{"arguments": {"a": 1}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "add", "arguments": [1]}\n</tool_call>',  # arguments not an object
    '<tool_call>\n{"name": "add", "arguments": {}}',  # never closed
    '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\nnot json\n</tool_call>',  # one bad
])
def test_chatml_malformed_stays_content(text):
    got = parse_chatml(text)
    assert got.tool_calls is None
    assert got.content == text


def test_chatml_plain_text_is_untouched():
    assert parse_chatml("  The answer is 3.\n") == Message(role="assistant", content="  The answer is 3.\n")


def test_llama3_round_trips_through_the_template():
    sent = Message(role="assistant", tool_calls=[call(0, "get_weather", city="Paris", days=2)])
    text = assistant_text("llama3", sent, "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")
    assert '"parameters"' in text
    got = parse_llama3(text)
    assert got.content is None
    assert args(got) == args(sent)
    assert args(parse_llama3("<|python_tag|>" + text, first_call_index=2))[0][0] == "call_2"


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "parameters": {"city": "Paris"}',  # missing brace
    '{"name": "get_weather", "parameters": "Paris"}',  # parameters not an object
    '{"name": "x", "value": 3}',  # a JSON answer, not a call
    '{"name": "get_weather", "parameters": {}, "extra": 1}',
    'Call {"name": "get_weather", "parameters": {}}',  # not the whole reply
    "It is sunny.",
])
def test_llama3_non_calls_stay_content(text):
    got = parse_llama3(text)
    assert got.tool_calls is None and got.content == text


def test_registry_and_gemma():
    assert set(PARSERS) == {"chatml", "llama3", "gemma"}
    text = '<tool_call>\n{"name": "add", "arguments": {}}\n</tool_call>'
    got = PARSERS["gemma"](text)
    assert got.tool_calls is None and got.content == text
