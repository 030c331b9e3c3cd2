"""The `hf` ChatBackend: K sampled replies per conversation from a local HF model, with a tool loop.

The first turn of every sample is decoded with the prompt prefilled once and its KV cache shared by
the K samples (`HFGenerator` does that). A sample whose reply calls tools gets one tool message per
call (from `tool_hook`) and continues on its own, up to `max_tool_rounds` times. Every decode is
seeded from the conversation's seed, the sample index and the round, so a sample is the same
whatever else is in the batch, the request or the shard.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from posttrain.data.chat_templates import detect_template, end_of_turn_ids
from posttrain.data.records import Message
from posttrain.generate.base import ChatSample, Generation, SamplingParams
from posttrain.generate.chat import ToolHook, render_prompt
from posttrain.generate.hf import HFGenerator
from posttrain.generate.parse import PARSERS
from posttrain.generate.sharded import derive_seed


@dataclass
class _SampleState:
    """One sample in progress: its new messages and the tokens generated so far (all rounds)."""

    messages: list[Message] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    calling: bool = False  # its last reply called tools that were answered: it continues


class HFChatBackend:
    """ChatBackend over `HFGenerator`: `params.n` replies per conversation, tools executed by `tool_hook`.

    A sample's `token_ids`/`logprobs` are those of every generated segment, concatenated in order
    (the tool messages in between are not generated, so they are not in them).
    """

    def __init__(self, model, tokenizer, *, template: str | None = None, batch_size: int = 32,
                 tool_hook: ToolHook | None = None, max_tool_rounds: int = 3, model_name: str | None = None):
        self.template = template or detect_template(tokenizer)
        if self.template not in PARSERS:
            raise ValueError(f"unknown chat template {self.template!r}; known: {sorted(PARSERS)}")
        self.tokenizer = tokenizer
        self.generator = HFGenerator(model, tokenizer, batch_size=batch_size,
                                     eos_token_ids=end_of_turn_ids(tokenizer, self.template), model_name=model_name)
        self.name = self.generator.model_name
        self.tool_hook = tool_hook
        self.max_tool_rounds = max_tool_rounds

    def chat(self, conversations: list[tuple[list, list | None]], params: SamplingParams,
             seeds: list[int] | None = None) -> list[list[ChatSample]]:
        """`params.n` samples per conversation, in input order."""
        if seeds is None:
            base = params.seed if params.seed is not None else secrets.randbits(62)
            seeds = [derive_seed(base, i) for i in range(len(conversations))]
        if len(seeds) != len(conversations):
            raise ValueError(f"got {len(seeds)} seeds for {len(conversations)} conversations")
        states = [[_SampleState() for _ in range(params.n)] for _ in conversations]
        prompts = [render_prompt(self.tokenizer, messages, tools) for messages, tools in conversations]
        first = self.generator.generate(prompts, params, seeds=seeds)
        for i, generations in enumerate(first):
            for state, generation in zip(states[i], generations):
                self._take(state, generation, conversations[i], can_call=self.max_tool_rounds > 0)
        one = params.model_copy(update={"n": 1})
        for round_index in range(1, self.max_tool_rounds + 1):
            pending = [(i, k) for i, row in enumerate(states) for k, state in enumerate(row) if state.calling]
            if not pending:
                break
            prompts = [render_prompt(self.tokenizer, conversations[i][0] + states[i][k].messages, conversations[i][1])
                       for i, k in pending]
            round_seeds = [derive_seed(seeds[i], k, round_index) for i, k in pending]
            for (i, k), generations in zip(pending, self.generator.generate(prompts, one, seeds=round_seeds)):
                self._take(states[i][k], generations[0], conversations[i],
                           can_call=round_index < self.max_tool_rounds)
        return [[self._sample(state, params) for state in row] for row in states]

    def _take(self, state: _SampleState, generation: Generation, conversation: tuple[list, list | None],
              can_call: bool) -> None:
        """Parse one generated reply into the sample; answer its tool calls when another round may follow."""
        messages, tools = conversation
        # Number calls across the whole chat so that ids stay unique.
        calls_so_far = sum(len(m.tool_calls or []) for m in messages + state.messages)
        reply = PARSERS[self.template](generation.text, first_call_index=calls_so_far)
        state.messages.append(reply)
        state.token_ids += generation.token_ids
        state.logprobs += generation.logprobs or []
        state.finish_reason = generation.finish_reason
        state.calling = bool(self.tool_hook is not None and reply.tool_calls and can_call)
        if state.calling:
            for call in reply.tool_calls:
                state.messages.append(Message(role="tool", content=self.tool_hook(call, tools), tool_call_id=call.id))

    def _sample(self, state: _SampleState, params: SamplingParams) -> ChatSample:
        return ChatSample(messages=state.messages, finish_reason=state.finish_reason, token_ids=state.token_ids,
                          logprobs=state.logprobs, logprobs_of=params.logprobs_of(), model=self.name)
