"""A reward model as a `Scorer`: batched, packed scoring for rejection sampling, pair building and RL.

Conversations are tokenized with the reward model's own chat template, packed (no padding) into
rows of at most `batch_size` sequences and `max_batch_tokens` tokens, and read at each sequence's
last token. A multi-output head is combined by the weights in its config, or by `attribute_weights`
given here (e.g. HelpSteer2's attributes re-weighted for one use). `normalize` puts the reward on a
common scale, (reward - mean) / std with the mean and std its reward_model stage measured on its
training responses, so that several reward models can be summed into an ensemble
(`scorer: [{type: reward_model, path: A, options: {normalize: true}}, {type: reward_model, path: B, ...}]`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from posttrain.data.chat_templates import detect_template
from posttrain.data.packing import collate_packed
from posttrain.data.records import Message, Prompt
from posttrain.data.tokenize import tokenize_conversation
from posttrain.judge.scorer import Score
from posttrain.models.forward import unwrap_model
from posttrain.models.reward import (
    RewardHead, load_reward_model, max_tokens_of, packed_head_outputs, reward_scale_of,
)
from posttrain.models.runtime import default_device, eval_mode


class RewardModelScorer:
    """Scores (prompt, response) pairs with a reward model directory or an in-memory reward model."""

    def __init__(self, path_or_model: str | Path | Any, tokenizer: Any = None, batch_size: int = 64,
                 attribute_weights: dict[str, float] | None = None, name: str = "reward_model",
                 device: torch.device | str | None = None, max_batch_tokens: int = 1024, normalize: bool = False):
        if isinstance(path_or_model, (str, Path)):
            model, loaded_tokenizer, head = load_reward_model(path_or_model, device=device or default_device())
            tokenizer = tokenizer or loaded_tokenizer
        else:
            if tokenizer is None:
                raise ValueError("an in-memory reward model needs its tokenizer")
            model, head = path_or_model, RewardHead.from_config(unwrap_model(path_or_model).config)
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.head = head.with_weights(attribute_weights)
        self.template = detect_template(tokenizer)
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.max_tokens = max_tokens_of(model)
        self.mean, self.std = reward_scale_of(unwrap_model(model).config) if normalize else (0.0, 1.0)

    def score(self, prompts: list[Prompt], responses: list[list[Message]]) -> list[Score]:
        """One Score per (prompt, response): the combined reward, with the outputs as reason."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        conversations = [(p.messages + list(r), p.tools) for p, r in zip(prompts, responses)]
        outputs = self.head_outputs(conversations)  # (N, K)
        rewards = self._rewards(outputs).tolist()
        if self.head.size == 1:
            return [Score(value) for value in rewards]
        reasons = ["; ".join(f"{n}={v:.3g}" for n, v in zip(self.head.outputs, row)) for row in outputs.tolist()]
        return [Score(value, reason) for value, reason in zip(rewards, reasons)]

    def score_conversations(self, conversations: list[tuple[list[Message], list | None]]) -> list[float]:
        """The combined reward of whole conversations ((messages ending with the assistant, tools) pairs)."""
        return self._rewards(self.head_outputs(conversations)).tolist()

    def _rewards(self, outputs: torch.Tensor) -> torch.Tensor:
        return (self.head.combine(outputs) - self.mean) / self.std

    def head_outputs(self, conversations: list[tuple[list[Message], list | None]]) -> torch.Tensor:
        """Raw head outputs (N, K), float32 on the CPU, in input order."""
        return self.outputs_of_ids([self._ids(messages, tools) for messages, tools in conversations])

    def outputs_of_ids(self, ids: list[list[int]]) -> torch.Tensor:
        """Raw head outputs (N, K) of tokenized sequences, in input order."""
        # Keep the end, as training did: the reward is read at the last token.
        ids = [x[-self.max_tokens:] if self.max_tokens else x for x in ids]
        device = next(self.model.parameters()).device
        out = []
        with torch.inference_mode(), eval_mode(self.model):
            for chunk in self._chunks(ids):
                batch = collate_packed([{"input_ids": x, "loss_mask": [False] * len(x)} for x in chunk])
                out.append(packed_head_outputs(self.model, batch.to(device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.head.size)

    def _ids(self, messages: list[Message], tools: list | None) -> list[int]:
        return tokenize_conversation(self.tokenizer, messages, tools, self.template).input_ids

    def _chunks(self, ids: list[list[int]]) -> Iterator[list[list[int]]]:
        chunk: list[list[int]] = []
        tokens = 0
        for x in ids:
            if chunk and (len(chunk) >= self.batch_size or tokens + len(x) > self.max_batch_tokens):
                yield chunk
                chunk, tokens = [], 0
            chunk.append(x)
            tokens += len(x)
        if chunk:
            yield chunk
