"""generate_chat: render, generate, parse, and the tool loop, with a scripted generator."""
from __future__ import annotations

import json

import pytest
import torch

from posttrain.data.records import FunctionDef, Message, ToolCall, ToolDef, check_role_order
from posttrain.generate.base import Generation, Generator, SamplingParams
from posttrain.data.tokenize import tokenize_prompt
from posttrain.generate.chat import generate_chat, render_prompt
from posttrain.generate.hf import HFGenerator
from tiny_generate import chat_tokenizer, tiny_model

torch.set_num_threads(1)

ADD = ToolDef(function=FunctionDef(name="add", parameters={"type": "object", "properties": {}}))


def tool_text(name: str, **arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


class ScriptedGenerator:
    """Answers each prompt with the next canned text of the conversation whose marker it contains."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tokenizer = tokenizer
        self.scripts = {marker: list(texts) for marker, texts in scripts.items()}
        self.calls: list[list[str]] = []  # decoded prompts, per generate call

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Generation]]:
        decoded = [self.tokenizer.decode(p) for p in prompts]
        self.calls.append(decoded)
        out = []
        for text in decoded:
            marker = next(m for m in self.scripts if m in text)
            reply = self.scripts[marker].pop(0)
            out.append([Generation(token_ids=[1], text=reply, finish_reason="eos", model="scripted")])
        return out


def add_hook(call: ToolCall, tools: list[ToolDef] | None) -> str:
    assert tools == [ADD]
    arguments = json.loads(call.function.arguments)
    return str(arguments["a"] + arguments["b"])


def user(text: str) -> list[Message]:
    return [Message(role="user", content=text)]


@pytest.fixture(scope="module")
def tokenizer():
    return chat_tokenizer()


def test_scripted_generator_is_a_generator(tokenizer):
    assert isinstance(ScriptedGenerator(tokenizer, {}), Generator)


def test_tool_call_is_answered_and_generation_continues(tokenizer):
    gen = ScriptedGenerator(tokenizer, {
        "alpha": [tool_text("add", a=1, b=2), "The answer is 3."],
        "beta": ["Hello."],
    })
    conversations = [(user("alpha: add 1 and 2"), [ADD]), (user("beta: say hi"), None)]
    out = generate_chat(gen, tokenizer, conversations, SamplingParams(), template="chatml", tool_hook=add_hook)
    first, second = out
    assert [m.role for m in first] == ["assistant", "tool", "assistant"]
    assert first[0].tool_calls[0].function.name == "add" and first[0].tool_calls[0].id == "call_0"
    assert first[1] == Message(role="tool", content="3", tool_call_id="call_0")
    assert first[2].content == "The answer is 3."
    assert second == [Message(role="assistant", content="Hello.")]
    # Round 2 is batched over the conversations still in flight only, and its prompt carries
    # the call and its result.
    assert [len(c) for c in gen.calls] == [2, 1]
    assert '"name": "add"' in gen.calls[1][0] and "<tool_response>\n3\n</tool_response>" in gen.calls[1][0]
    assert gen.calls[1][0].endswith("<|im_start|>assistant\n")
    check_role_order(conversations[0][0] + first, must_end_with=("assistant",))


def test_tool_rounds_are_capped_and_ids_stay_unique(tokenizer):
    gen = ScriptedGenerator(tokenizer, {"loop": [tool_text("add", a=i, b=1) for i in range(5)]})
    out = generate_chat(gen, tokenizer, [(user("loop"), [ADD])], SamplingParams(), template="chatml",
                        tool_hook=add_hook, max_tool_rounds=2)[0]
    assert [m.role for m in out] == ["assistant", "tool", "assistant", "tool", "assistant"]
    assert [m.content for m in out if m.role == "tool"] == ["1", "2"]
    # The reply after the last round keeps its call, unanswered.
    assert [c.id for m in out if m.tool_calls for c in m.tool_calls] == ["call_0", "call_1", "call_2"]
    assert len(gen.calls) == 3


def test_without_hook_tool_calls_are_returned(tokenizer):
    gen = ScriptedGenerator(tokenizer, {"q": [tool_text("add", a=1, b=2)]})
    out = generate_chat(gen, tokenizer, [(user("q"), [ADD])], SamplingParams(), template="chatml")[0]
    assert len(out) == 1 and out[0].tool_calls[0].function.name == "add"


def test_malformed_call_ends_the_conversation_as_content(tokenizer):
    bad = '<tool_call>\n{"name": "add", "arguments": {"a": 1}\n</tool_call>'
    gen = ScriptedGenerator(tokenizer, {"q": [bad]})
    out = generate_chat(gen, tokenizer, [(user("q"), [ADD])], SamplingParams(), template="chatml",
                        tool_hook=add_hook)[0]
    assert out == [Message(role="assistant", content=bad)]


def test_rejects_n_and_unknown_template(tokenizer):
    gen = ScriptedGenerator(tokenizer, {})
    with pytest.raises(ValueError, match="one reply"):
        generate_chat(gen, tokenizer, [(user("q"), None)], SamplingParams(n=2), template="chatml")
    with pytest.raises(ValueError, match="unknown chat template"):
        generate_chat(gen, tokenizer, [(user("q"), None)], SamplingParams(), template="nope")


def test_prompt_renders_as_training_data_does(tokenizer):
    messages = user("add 1 2") + [
        Message(role="assistant", tool_calls=[ToolCall.model_validate(
            {"id": "call_0", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}})]),
        Message(role="tool", content="3", tool_call_id="call_0"),
    ]
    assert render_prompt(tokenizer, messages, [ADD]) == tokenize_prompt(tokenizer, messages, [ADD], template="chatml")


def test_with_a_real_model(tokenizer):
    model = tiny_model(seed=0, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), vocab_size=len(tokenizer))
    gen = HFGenerator(model, tokenizer)
    params = SamplingParams(max_new_tokens=6)
    conversations = [(user("add 1 2"), [ADD]), (user("the answer"), None)]
    out = generate_chat(gen, tokenizer, conversations, params, template="chatml", tool_hook=add_hook)
    for (messages, tools), new in zip(conversations, out):
        direct = gen.generate([tokenize_prompt(tokenizer, messages, tools)], params)[0][0]
        assert new[0].role == "assistant" and new[0].content == direct.text
