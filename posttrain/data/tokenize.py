"""Conversations to token ids, with a mask that is True exactly on what the assistant writes.

The ids are those of `tokenizer.apply_chat_template(messages, tools=tools)`: the chat is rendered
once and encoded whole, so BPE merges are the ones serving will see. The mask comes from the
character spans of the templates' `{% generation %}` blocks (assistant content, tool calls and the
end-of-turn token; never the role header before them or the newline after) mapped onto the
tokens' character offsets. A token counts as the assistant's when it *starts* inside a span: a
token that merged across a span's start (only possible when the content opens with whitespace the
template keeps) belongs to the header, the part the model is given, not the part it learns.

Tool-call arguments that arrive as JSON strings (the OpenAI format of `records.Message`) are parsed
to dicts before rendering, as vLLM does, so the rendered call has one canonical spelling.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any, Iterable

from transformers.utils.chat_template_utils import render_jinja_template

from posttrain.data.chat_templates import ChatTemplate, detect_template, get_template


@dataclass
class TokenizedChat:
    """Token ids of a rendered chat and, per token, whether the assistant wrote it."""

    input_ids: list[int]
    assistant_mask: list[bool]

    def __len__(self) -> int:
        return len(self.input_ids)


def _as_dict(item: Any) -> dict:
    """A message or tool as a plain dict without None values (records' pydantic models or dicts)."""
    if hasattr(item, "model_dump"):
        return item.model_dump(mode="json", exclude_none=True)
    if not isinstance(item, dict):
        raise TypeError(f"expected a message/tool dict or record model, got {type(item).__name__}")
    return {key: copy.deepcopy(value) for key, value in item.items() if value is not None}


def _parse_arguments(message: dict) -> dict:
    """Replace JSON-string tool-call arguments by the objects they encode (in place; returns the message)."""
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            try:
                function["arguments"] = json.loads(arguments)
            except json.JSONDecodeError as err:
                raise ValueError(f"tool call {function.get('name')!r}: arguments are not JSON: {err.msg}") from None
    return message


def normalize_messages(messages: Iterable[Any]) -> list[dict]:
    """Messages as the templates expect them: dicts, no None values, tool-call arguments parsed."""
    return [_parse_arguments(_as_dict(message)) for message in messages]


def normalize_tools(tools: Iterable[Any] | None) -> list[dict] | None:
    """Tool definitions as OpenAI-style dicts, or None when there are none."""
    tool_list = [_as_dict(tool) for tool in tools or []]
    return tool_list or None


def _check_supported(spec: ChatTemplate, messages: list[dict], tools: list[dict] | None) -> None:
    """Raise a ValueError, naming the message, for what the format cannot express."""
    if not messages:
        raise ValueError("messages: empty")
    for i, message in enumerate(messages):
        calls = message.get("tool_calls") or []
        if not spec.supports_tools and (tools or calls or message.get("role") == "tool"):
            raise ValueError(f"template {spec.name!r} has no tool format: "
                             "tools, tool calls and tool messages are not supported")
        if spec.single_tool_call and len(calls) > 1:
            raise ValueError(f"messages[{i}]: template {spec.name!r} renders one tool call per assistant turn, "
                             f"got {len(calls)}")
        if spec.single_tool_call and calls and (message.get("content") or "").strip():
            raise ValueError(f"messages[{i}]: template {spec.name!r} renders a tool-call turn as the call alone; "
                             "its content would be lost")


def _resolve(tokenizer: Any, template: str | None) -> ChatTemplate:
    """The template to render with; it must be the one installed, so ids match apply_chat_template."""
    spec = get_template(template or detect_template(tokenizer))
    if getattr(tokenizer, "chat_template", None) != spec.source:
        raise ValueError(f"tokenizer's chat_template is not posttrain's {spec.name!r}; "
                         f"call install_template(tokenizer, {spec.name!r})")
    return spec


def _render(tokenizer: Any, spec: ChatTemplate, messages: list[dict], tools: list[dict] | None,
            add_generation_prompt: bool) -> tuple[str, list[tuple[int, int]]]:
    """Rendered text and the character spans of its `{% generation %}` blocks, as apply_chat_template renders."""
    rendered, spans = render_jinja_template(
        conversations=[messages],
        tools=tools,
        chat_template=spec.source,
        return_assistant_tokens_mask=True,
        add_generation_prompt=add_generation_prompt,
        **tokenizer.special_tokens_map,
    )
    return rendered[0], spans[0]


def _mask_from_spans(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """True for each token whose first character lies in a span (spans and offsets both ascend)."""
    mask = []
    span_index = 0
    for start, _end in offsets:
        while span_index < len(spans) and start >= spans[span_index][1]:
            span_index += 1
        inside = span_index < len(spans) and spans[span_index][0] <= start
        mask.append(inside)
    return mask


def tokenize_conversation(tokenizer: Any, messages: Iterable[Any], tools: Iterable[Any] | None = None,
                          template: str | None = None) -> TokenizedChat:
    """Ids of the whole chat (no generation prompt) and the assistant mask; see the module docstring.

    `template` names the format (default: detected); the tokenizer must have it installed.
    """
    spec = _resolve(tokenizer, template)
    message_dicts, tool_dicts = normalize_messages(messages), normalize_tools(tools)
    _check_supported(spec, message_dicts, tool_dicts)
    text, spans = _render(tokenizer, spec, message_dicts, tool_dicts, add_generation_prompt=False)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = _mask_from_spans(encoding["offset_mapping"], spans)
    _check_turn_ends(tokenizer, spec, encoding["input_ids"], mask)
    return TokenizedChat(input_ids=list(encoding["input_ids"]), assistant_mask=mask)


def _check_turn_ends(tokenizer: Any, spec: ChatTemplate, ids: list[int], mask: list[bool]) -> None:
    """Each masked run must end with the end-of-turn token: what the model learns to stop with."""
    end_id = tokenizer.convert_tokens_to_ids(spec.end_of_turn)
    for i, inside in enumerate(mask):
        run_ends = inside and (i + 1 == len(mask) or not mask[i + 1])
        if run_ends and ids[i] != end_id:
            raise RuntimeError(f"assistant span ends with token {ids[i]}, not {spec.end_of_turn!r}: "
                               "template and tokenizer disagree")


def tokenize_prompt(tokenizer: Any, messages: Iterable[Any], tools: Iterable[Any] | None = None,
                    template: str | None = None) -> list[int]:
    """Ids of the chat so far followed by the assistant header: what generation starts from."""
    spec = _resolve(tokenizer, template)
    message_dicts, tool_dicts = normalize_messages(messages), normalize_tools(tools)
    _check_supported(spec, message_dicts, tool_dicts)
    text, _ = _render(tokenizer, spec, message_dicts, tool_dicts, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
