"""Chat generation on top of any `Generator`: render, generate, parse, and run tool round trips.

Every conversation still in flight is rendered with the tokenizer's chat template and generated in
one batch; a reply that calls tools gets one tool message per call (from `tool_hook`) and goes back
into the next batch, up to `max_tool_rounds` times.
"""
from __future__ import annotations

from collections.abc import Callable

from posttrain.data.records import Message, ToolCall, ToolDef
from posttrain.data.tokenize import normalize_messages, normalize_tools
from posttrain.generate.base import Generator, SamplingParams
from posttrain.generate.parse import PARSERS

ToolHook = Callable[[ToolCall, "list[ToolDef] | None"], str]


def render_prompt(tokenizer, messages: list[Message], tools: list[ToolDef] | None) -> list[int]:
    """Token ids of the conversation followed by the assistant generation prompt.

    Messages go through the same normalisation as training data (tool-call arguments as dicts), so
    a prompt renders here exactly as it does in `data.tokenize.tokenize_prompt`; any tokenizer's own
    template works.
    """
    ids = tokenizer.apply_chat_template(
        normalize_messages(messages),
        tools=normalize_tools(tools),
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    # Some tokenizer versions still hand back an encoding object.
    return list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)


def generate_chat(
    generator: Generator,
    tokenizer,
    conversations: list[tuple[list[Message], list[ToolDef] | None]],
    params: SamplingParams,
    *,
    template: str,
    tool_hook: ToolHook | None = None,
    max_tool_rounds: int = 3,
) -> list[list[Message]]:
    """One reply per conversation: the new messages (assistant, then tool / assistant ... turns).

    With `tool_hook`, an assistant turn with tool calls is answered by `tool_hook(call, tools)` per
    call and generation continues, at most `max_tool_rounds` times; a reply after the last round
    that still calls tools is returned with those calls unanswered.
    """
    if params.n != 1:
        raise ValueError("generate_chat makes one reply per conversation; repeat a conversation to get K samples")
    if template not in PARSERS:
        raise ValueError(f"unknown chat template {template!r}; known: {sorted(PARSERS)}")
    parse = PARSERS[template]
    new_messages: list[list[Message]] = [[] for _ in conversations]
    in_flight = list(range(len(conversations)))
    for round_index in range(max_tool_rounds + 1):
        prompts = [render_prompt(tokenizer, conversations[i][0] + new_messages[i], conversations[i][1])
                   for i in in_flight]
        generations = generator.generate(prompts, params)
        still_calling = []
        for i, gens in zip(in_flight, generations):
            # Number calls across the whole chat so that ids stay unique.
            calls_so_far = sum(len(m.tool_calls or []) for m in conversations[i][0] + new_messages[i])
            reply = parse(gens[0].text, first_call_index=calls_so_far)
            new_messages[i].append(reply)
            if tool_hook is not None and reply.tool_calls and round_index < max_tool_rounds:
                tools = conversations[i][1]
                for call in reply.tool_calls:
                    result = tool_hook(call, tools)
                    new_messages[i].append(Message(role="tool", content=result, tool_call_id=call.id))
                still_calling.append(i)
        in_flight = still_calling
        if not in_flight:
            break
    return new_messages
