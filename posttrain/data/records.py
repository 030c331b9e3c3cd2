"""Record schemas: every dataset row is one of these, with a content-hash `id` and `meta` lineage.

Tool calls follow the OpenAI chat format that vLLM and OpenAI-compatible servers speak: an assistant
message carries `tool_calls` whose `function.arguments` is a JSON *string*; a `tool` message answers
with `tool_call_id`.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Role = Literal["system", "user", "assistant", "tool"]


class Meta(BaseModel):
    """Lineage: which stage, round, model and seed produced a row. Excluded from the id."""

    model_config = ConfigDict(extra="allow")
    stage: str | None = None
    round: int | None = None
    model: str | None = None
    seed: int | None = None
    source: str | None = None  # file or dataset the row came from


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    arguments: str  # a JSON object, as a string (OpenAI format)

    @field_validator("arguments")
    @classmethod
    def _arguments_are_json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"tool call arguments are not valid JSON: {err.msg}") from None
        if not isinstance(parsed, dict):
            raise ValueError("tool call arguments must be a JSON object")
        return value


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolDef(BaseModel):
    """A tool the model may call, OpenAI style: {"type": "function", "function": {...}}."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"] = "function"
    function: FunctionDef


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None  # on tool messages: which call this answers
    name: str | None = None

    @model_validator(mode="after")
    def _check_shape(self) -> "Message":
        if self.tool_calls and self.role != "assistant":
            raise ValueError(f"only assistant messages carry tool_calls, not {self.role}")
        if self.content is None and not self.tool_calls:
            raise ValueError(f"{self.role} message has no content")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError("tool_call_id is only for tool messages")
        return self


def check_role_order(messages: list[Message], *, must_end_with: tuple[str, ...]) -> None:
    """Raise ValueError naming the offending position when the turn order is not a valid chat.

    Valid: an optional leading system message, then a user turn, then assistant turns; an assistant
    turn with tool_calls is followed by one tool message per call before the assistant continues.
    """
    if not messages:
        raise ValueError("messages: empty")
    expect_tools = 0
    prev = None
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if msg.role == "system":
            if i != 0:
                raise ValueError(f"{where}: system message only allowed first")
        elif msg.role == "user":
            if prev not in (None, "system", "assistant") or expect_tools:
                raise ValueError(f"{where}: user turn after {prev}")
        elif msg.role == "assistant":
            if prev not in ("user", "tool") or expect_tools:
                raise ValueError(f"{where}: assistant turn after {prev or 'nothing'}")
            expect_tools = len(msg.tool_calls or [])
        elif msg.role == "tool":
            if expect_tools == 0:
                raise ValueError(f"{where}: tool message without a pending tool call")
            expect_tools -= 1
        prev = msg.role
    if expect_tools:
        raise ValueError(f"messages: {expect_tools} tool call(s) never answered")
    if messages[-1].role not in must_end_with:
        raise ValueError(f"messages[{len(messages) - 1}]: ends with {messages[-1].role}, expected {'/'.join(must_end_with)}")


def content_hash(payload: Any) -> str:
    """Hash of the canonical (sorted-key, compact) JSON of `payload`: 16 hex characters."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class Record(BaseModel):
    """Base of every row: `id` is the hash of the content fields (never of `meta`).

    An `id` given in the input that differs from the content hash is kept in `meta.source_id`.
    """

    model_config = ConfigDict(extra="forbid")
    kind: ClassVar[str] = "record"
    id: str = ""
    meta: Meta = Field(default_factory=Meta)

    def content(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude={"id", "meta"}, exclude_none=True)

    def compute_id(self) -> str:
        return content_hash({"kind": self.kind, **self.content()})

    @model_validator(mode="after")
    def _set_id(self) -> "Record":
        computed = self.compute_id()
        if self.id and self.id != computed:
            self.meta.source_id = self.id  # type: ignore[attr-defined]
        self.id = computed
        return self


class Conversation(Record):
    """A chat to train on: ends with an assistant turn."""

    kind: ClassVar[str] = "conversation"
    messages: list[Message]
    tools: list[ToolDef] | None = None

    @model_validator(mode="after")
    def _check_order(self) -> "Conversation":
        check_role_order(self.messages, must_end_with=("assistant",))
        return self


class Prompt(Record):
    """What a model is asked: the conversation so far (ends with a user turn), with task metadata.

    `check` is the verifiable spec a grader reads (expected answer, constraints); `family` names the
    task family (math, instruction_following, ...).
    """

    kind: ClassVar[str] = "prompt"
    messages: list[Message]
    tools: list[ToolDef] | None = None
    family: str | None = None
    tags: list[str] = Field(default_factory=list)
    difficulty: float | None = None
    check: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check_order(self) -> "Prompt":
        check_role_order(self.messages, must_end_with=("user", "tool"))
        return self


class Response(BaseModel):
    """One sampled answer to a prompt: the assistant's messages (with any tool round trips).

    Its id covers the prompt id, the content and the sample index, so two identical samples of one
    prompt keep distinct ids.
    """

    model_config = ConfigDict(extra="forbid")
    id: str = ""
    index: int = 0
    messages: list[Message]
    score: float | None = None  # grader or judge score
    reason: str | None = None
    reward: float | None = None  # reward-model score
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        """The final assistant message's content."""
        for msg in reversed(self.messages):
            if msg.role == "assistant" and msg.content is not None:
                return msg.content
        return ""


class Completion(Record):
    """A prompt with several sampled responses and their scores."""

    kind: ClassVar[str] = "completion"
    prompt: Prompt
    responses: list[Response] = Field(default_factory=list)

    def content(self) -> dict[str, Any]:
        return {"prompt": self.prompt.id}

    @model_validator(mode="after")
    def _set_response_ids(self) -> "Completion":
        for resp in self.responses:
            body = resp.model_dump(mode="json", include={"messages"}, exclude_none=True)
            resp.id = content_hash({"prompt": self.prompt.id, "index": resp.index, **body})
        return self


PreferenceStrength = Literal["significantly_better", "better", "slightly_better", "negligibly_better"]


class PreferencePair(Record):
    """A prompt with a chosen and a rejected answer (and optionally an edited one, best of all).

    Rewards, absolute scores and per-attribute scores are optional; `strength` is the annotated
    preference level (Llama 2/3 and AFM use four).
    """

    kind: ClassVar[str] = "preference_pair"
    prompt: Prompt
    chosen: list[Message]
    rejected: list[Message]
    edited: list[Message] | None = None
    chosen_reward: float | None = None
    rejected_reward: float | None = None
    chosen_score: float | None = None  # absolute annotated score (Baichuan 2 pointwise regulariser)
    rejected_score: float | None = None
    chosen_attributes: dict[str, float] | None = None  # HelpSteer2-style attribute scores
    rejected_attributes: dict[str, float] | None = None
    strength: PreferenceStrength | None = None

    def content(self) -> dict[str, Any]:
        body = self.model_dump(mode="json", exclude={"id", "meta", "prompt"}, exclude_none=True)
        return {"prompt": self.prompt.id, **body}

    @model_validator(mode="after")
    def _check_answers(self) -> "PreferencePair":
        for name in ("chosen", "rejected", "edited"):
            msgs = getattr(self, name)
            if msgs is None:
                continue
            if not msgs or msgs[0].role != "assistant":
                raise ValueError(f"{name}: must start with an assistant message")
            check_role_order(self.prompt.messages + msgs, must_end_with=("assistant",))
        return self


RECORD_KINDS: dict[str, type[Record]] = {
    cls.kind: cls for cls in (Conversation, Prompt, Completion, PreferencePair)
}
