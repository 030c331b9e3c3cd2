"""The one generation interface every backend shares (local HF, vLLM, OpenAI-compatible HTTP).

A backend takes token-id prompts and sampling parameters and returns, per prompt, `n` generations
with their token ids, decoded text, why they stopped, and the per-token log-probs of the chosen
tokens. Callers that work with chats render and parse around it (see `chat.py`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field

FinishReason = Literal["stop", "length", "eos"]


class SamplingParams(BaseModel):
    """How to decode. temperature 0 means greedy (top_p / top_k then do nothing)."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(128, ge=1, description="most tokens generated per sample")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; otherwise logits are divided by it")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling: keep the smallest set with this mass")
    top_k: int = Field(0, ge=0, description="keep only the k most likely tokens; 0 = all")
    n: int = Field(1, ge=1, description="samples per prompt")
    stop: list[str] = Field(default_factory=list, description="strings that end a sample; the text is cut before them")
    seed: int | None = Field(None, description="makes sampling reproducible, independent of batching")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def logprobs_of(self) -> str:
        """Names the distribution that returned log-probs come from (see `Generation.logprobs_of`)."""
        return "greedy-policy" if self.greedy else f"sampling T={self.temperature}"


@dataclass
class Generation:
    """One sample for one prompt.

    `token_ids` and `logprobs` are what the model produced, including a final eos token (finish
    'eos') or the token that completed a stop string (finish 'stop'); `text` is the decoded new text
    without that eos and cut before the stop string. `logprobs[i]` is log p(token_ids[i]) under
    `logprobs_of`: 'greedy-policy' is the model's own softmax; 'sampling T=t' is softmax(logits / t),
    before any top-k / top-p truncation (the distribution a policy-gradient ratio wants).
    """

    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    logprobs: list[float] | None = None
    logprobs_of: str | None = None
    model: str = ""


@runtime_checkable
class Generator(Protocol):
    """A generation backend: `n` generations per prompt, in the prompts' order."""

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Generation]]: ...


@dataclass
class ChatSample:
    """One sampled reply to a conversation: the assistant's new messages, with what the backend knows.

    `messages` holds the assistant turn (and, where the backend ran a tool loop, the tool results
    and later assistant turns). `token_ids`/`logprobs` are those of the generated tokens where the
    backend can give them (None for an HTTP server that does not return them).
    """

    messages: list  # list[posttrain.data.records.Message]
    finish_reason: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    logprobs_of: str | None = None
    model: str = ""


@runtime_checkable
class ChatBackend(Protocol):
    """Conversation-level generation: what stages that sample answers use (hf, openai, vllm).

    `conversations` are (messages, tools) pairs; `seeds[i]` (when given) seeds conversation i's
    samples, so that a sample's randomness depends on (run seed, prompt id, sample index) and not on
    batching or sharding. Returns `params.n` samples per conversation, in input order.
    """

    name: str

    def chat(self, conversations: list[tuple[list, list | None]], params: SamplingParams,
             seeds: list[int] | None = None) -> list[list[ChatSample]]: ...
