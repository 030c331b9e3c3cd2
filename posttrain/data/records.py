"""Record schemas: every dataset row is one of these, with a content-hash `id` and `meta` lineage.

Tool calls follow the OpenAI chat format that vLLM and OpenAI-compatible servers speak: an assistant
message carries `tool_calls` whose `function.arguments` is a JSON *string*; a `tool` message answers
with `tool_call_id`.

Shape errors are raised as `PydanticCustomError` (a ValueError) whose type is a stable reason key
(`role_order`, `bad_tool_arguments`, `missing_field`) and whose context names the offending `field`
relative to the model being validated, so a reader can quarantine a row with its exact field.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

Role = Literal["system", "user", "assistant", "tool"]


def _shape_error(reason: str, field: str, detail: str) -> PydanticCustomError:
    """A validation error whose type is the quarantine reason and whose context names the field."""
    message = f"{field}: {detail}" if field else detail
    return PydanticCustomError(reason, "{message}", {"field": field, "detail": detail, "message": message})


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

    @field_validator("arguments", mode="before")
    @classmethod
    def _arguments_are_json_object(cls, value: Any) -> str:
        if not isinstance(value, str):
            kind = "an object" if isinstance(value, dict) else type(value).__name__
            raise _shape_error("bad_tool_arguments", "", f"tool call arguments must be a JSON string, got {kind}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as err:
            raise _shape_error("bad_tool_arguments", "", f"tool call arguments are not valid JSON: {err.msg}") from None
        if not isinstance(parsed, dict):
            raise _shape_error("bad_tool_arguments", "", "tool call arguments must be a JSON object")
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
            raise _shape_error("invalid_value", "tool_calls", f"only assistant messages carry tool_calls, not {self.role}")
        if self.content is None and not self.tool_calls:
            raise _shape_error("missing_field", "content", f"{self.role} message has no content")
        if self.tool_call_id is not None and self.role != "tool":
            raise _shape_error("invalid_value", "tool_call_id", "tool_call_id is only for tool messages")
        return self


def check_role_order(
    messages: list[Message],
    *,
    must_end_with: tuple[str, ...],
    field_of: Callable[[int], str] | None = None,
) -> None:
    """Raise a ValueError (type `role_order`) naming the offending position when the turns are not a chat.

    Valid: an optional leading system message, then a user turn, then an assistant turn, alternating.
    An assistant turn with tool_calls is followed by one tool message per call (a tool message's
    `tool_call_id`, when given, must name a pending call) before the assistant continues.
    Two consecutive user (or assistant) turns are invalid: chat templates such as Llama's and
    Mistral's assume strict alternation, and a merged turn is what the writer meant in practice.
    `field_of(i)` names message i in errors (default `messages.{i}`).
    """
    name = field_of or (lambda i: f"messages.{i}")
    if not messages:
        raise _shape_error("role_order", name(0).rpartition(".")[0] or "messages", "no messages")
    pending: list[str] = []  # ids of tool calls not answered yet
    prev = None
    for i, msg in enumerate(messages):
        problem = _turn_problem(msg, i, prev, pending)
        if problem:
            raise _shape_error("role_order", name(i), problem)
        if msg.role == "assistant":
            pending = [call.id for call in msg.tool_calls or []]
        elif msg.role == "tool":
            pending.remove(msg.tool_call_id if msg.tool_call_id in pending else pending[0])
        prev = msg.role
    last = len(messages) - 1
    if pending:
        raise _shape_error("role_order", name(last), f"{len(pending)} tool call(s) never answered")
    if messages[-1].role not in must_end_with:
        raise _shape_error(
            "role_order", name(last), f"ends with {messages[-1].role}, expected {'/'.join(must_end_with)}"
        )


def _turn_problem(msg: Message, index: int, prev: str | None, pending: list[str]) -> str | None:
    """Why message `index` cannot follow `prev` (with `pending` unanswered tool calls), or None."""
    if msg.role == "system":
        return "system message only allowed first" if index != 0 else None
    if msg.role == "tool":
        if not pending:
            return "tool message without a pending tool call"
        if msg.tool_call_id is not None and msg.tool_call_id not in pending:
            return f"tool_call_id {msg.tool_call_id!r} answers no pending call ({', '.join(pending)})"
        return None
    if pending:
        return f"{msg.role} turn while {len(pending)} tool call(s) await a tool message"
    allowed = ("system", None, "assistant") if msg.role == "user" else ("user", "tool")
    return None if prev in allowed else f"{msg.role} turn after {prev or 'nothing'}"


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
        n_prompt = len(self.prompt.messages)
        for name in ("chosen", "rejected", "edited"):
            msgs = getattr(self, name)
            if msgs is None:
                continue
            if not msgs or msgs[0].role != "assistant":
                raise _shape_error("role_order", f"{name}.0", "an answer must start with an assistant message")

            def field_of(i: int, name: str = name) -> str:
                return f"prompt.messages.{i}" if i < n_prompt else f"{name}.{i - n_prompt}"

            check_role_order(self.prompt.messages + msgs, must_end_with=("assistant",), field_of=field_of)
        return self


RECORD_KINDS: dict[str, type[Record]] = {
    cls.kind: cls for cls in (Conversation, Prompt, Completion, PreferencePair)
}


def first_per_family(prompts: list[Prompt], limit: int | None) -> list[Prompt]:
    """The first `limit` prompts of each family, in input order; all of them when `limit` is None."""
    if limit is None:
        return prompts
    seen: dict[str, int] = {}
    kept = []
    for prompt in prompts:
        seen[prompt.family or ""] = seen.get(prompt.family or "", 0) + 1
        if seen[prompt.family or ""] <= limit:
            kept.append(prompt)
    return kept
