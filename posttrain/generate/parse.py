"""Turn an assistant's generated text into a `Message`, by chat template family.

Each template family writes tool calls its own way; the parser reads them back into OpenAI-style
`tool_calls` (arguments as a JSON string). A call that does not parse stays as plain content, so
the grader sees the malformed text and can fail it with a reason instead of it vanishing here.
Call ids are deterministic (`call_0`, `call_1`, ...), numbered from `first_call_index` so that ids
stay unique across the turns of one conversation.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from posttrain.data.records import FunctionCall, Message, ToolCall

# Qwen2.5 / Hermes style: one JSON object per <tool_call> block.
_CHATML_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
# Llama 3.1 may prefix a JSON tool call with <|python_tag|>.
_PYTHON_TAG = "<|python_tag|>"


def _load_object(text: str) -> dict[str, Any] | None:
    """The JSON object in `text`, or None when it is not one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _arguments_json(arguments: Any) -> str | None:
    """Arguments as a JSON-object string; accepts a dict or an (over-encoded) JSON-object string."""
    if isinstance(arguments, str):
        arguments = _load_object(arguments)
    if not isinstance(arguments, dict):
        return None
    return json.dumps(arguments, ensure_ascii=False)


def _tool_call(name: Any, arguments: Any, index: int) -> ToolCall | None:
    """A ToolCall when the name is a non-empty string and the arguments a JSON object, else None."""
    args = _arguments_json(arguments)
    if not isinstance(name, str) or not name or args is None:
        return None
    return ToolCall(id=f"call_{index}", function=FunctionCall(name=name, arguments=args))


def parse_chatml(text: str, first_call_index: int = 0) -> Message:
    """Qwen2.5 chatml: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks.

    Text outside the blocks is the content. If any block is malformed, or a `<tool_call>` is never
    closed, the whole text stays as content.
    """
    blocks = _CHATML_CALL.findall(text)
    if not blocks:
        return Message(role="assistant", content=text)
    calls = []
    for offset, block in enumerate(blocks):
        body = _load_object(block)
        call = None if body is None else _tool_call(body.get("name"), body.get("arguments"), first_call_index + offset)
        if call is None:
            return Message(role="assistant", content=text)
        calls.append(call)
    rest = _CHATML_CALL.sub("", text)
    if "<tool_call>" in rest or "</tool_call>" in rest:
        return Message(role="assistant", content=text)
    return Message(role="assistant", content=rest.strip() or None, tool_calls=calls)


def parse_llama3(text: str, first_call_index: int = 0) -> Message:
    """Llama 3.1 JSON tool calling: the whole reply is `{"name": ..., "parameters": {...}}`.

    Only an object with exactly those two keys is a call, so a JSON answer to a "reply in JSON"
    instruction stays content.
    """
    body_text = text.strip()
    if body_text.startswith(_PYTHON_TAG):
        body_text = body_text[len(_PYTHON_TAG):].strip()
    body = _load_object(body_text)
    if body is None or set(body) != {"name", "parameters"}:
        return Message(role="assistant", content=text)
    call = _tool_call(body["name"], body["parameters"], first_call_index)
    if call is None:
        return Message(role="assistant", content=text)
    return Message(role="assistant", content=None, tool_calls=[call])


def parse_plain(text: str, first_call_index: int = 0) -> Message:
    """Templates without tool calling (Gemma): the text is the content."""
    return Message(role="assistant", content=text)


PARSERS: dict[str, Callable[..., Message]] = {
    "chatml": parse_chatml,
    "llama3": parse_llama3,
    "gemma": parse_plain,
}
