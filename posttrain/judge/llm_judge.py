"""LLM-as-judge over any ChatBackend: pairwise verdicts asked in both orders, and single-answer 1-10 grades.

Pairwise (MT-Bench's prompt format; Nemotron-4's rule): the judge sees the question and two
answers and ends with [[A]], [[B]] or [[C]] (tie). It is asked twice, the second time with the
answers swapped; a verdict counts only when both orders name the same answer, which cancels the
judge's position bias. Single-answer grading asks for "Rating: [[k]]", k in 1..10, and is a
`Scorer` (value k / 10), so rejection sampling and pair building can rank with it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

from posttrain.data.records import Message, Prompt, content_hash
from posttrain.generate.base import ChatBackend, SamplingParams
from posttrain.generate.sharded import derive_seed
from posttrain.judge.scorer import Score

PAIRWISE_TEMPLATE = """Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the conversation below. Choose the assistant that follows the user's instructions and answers better: consider correctness, helpfulness, relevance and level of detail. Do not let the order of the answers, their length or the assistants' names influence you. Explain your comparison briefly, then output your final verdict strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.

[Conversation]
{conversation}

[The Start of Assistant A's Answer]
{answer_a}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{answer_b}
[The End of Assistant B's Answer]"""

SINGLE_TEMPLATE = """Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to the conversation below. Consider correctness, helpfulness, relevance and level of detail. Explain your evaluation briefly, then rate the response on a scale of 1 to 10 strictly in this format: "Rating: [[5]]".

[Conversation]
{conversation}

[The Start of the Assistant's Answer]
{answer}
[The End of the Assistant's Answer]"""

Verdict = Literal["A", "B", "tie"]
_PAIR_VERDICT = re.compile(r"\[\[([ABC])\]\]")
_RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")


def render_transcript(messages: list[Message]) -> str:
    """Messages as plain text for a judge: one `role: content` block per turn, tool calls spelled out."""
    parts = []
    for msg in messages:
        text = msg.content or ""
        for call in msg.tool_calls or []:
            text += f"{' ' if text else ''}[calls {call.function.name}({call.function.arguments})]"
        parts.append(f"{msg.role}: {text}")
    return "\n".join(parts)


def parse_pairwise(text: str) -> Verdict | None:
    """The last [[A]] / [[B]] / [[C]] in the judge's reply (C = tie), or None when there is none."""
    found = _PAIR_VERDICT.findall(text)
    if not found:
        return None
    return {"A": "A", "B": "B", "C": "tie"}[found[-1]]


def parse_rating(text: str) -> float | None:
    """The last [[k]] in the judge's reply when 1 <= k <= 10, else None."""
    found = _RATING.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1.0 <= value <= 10.0 else None


@dataclass(frozen=True)
class PairVerdict:
    """Both orders' verdicts on (first, second), mapped back to the original order.

    `winner` is 'first' or 'second' only when both orders agree on it; `label` says what happened:
    agree, tie (both say tie), disagree (orders name different answers, or one a tie), unparsed.
    """

    winner: Literal["first", "second"] | None
    label: Literal["agree", "tie", "disagree", "unparsed"]
    forward: Verdict | None  # first shown as A
    backward: Verdict | None  # first shown as B, mapped back: 'A' means the first answer
    reasons: tuple[str, str]

    @property
    def agreed(self) -> bool:
        return self.label in ("agree", "tie")


def combine_orders(forward: Verdict | None, swapped: Verdict | None, reasons: tuple[str, str]) -> PairVerdict:
    """The pair's verdict from the forward order and the swapped order (whose A is the second answer)."""
    backward = {"A": "B", "B": "A", "tie": "tie", None: None}[swapped]
    if forward is None or backward is None:
        label, winner = "unparsed", None
    elif forward != backward:
        label, winner = "disagree", None
    elif forward == "tie":
        label, winner = "tie", None
    else:
        label, winner = "agree", ("first" if forward == "A" else "second")
    return PairVerdict(winner=winner, label=label, forward=forward, backward=backward, reasons=reasons)


def agreement_rate(verdicts: list[PairVerdict]) -> float:
    """Share of pairs whose two orders agree (ties included); 0 when there are none."""
    return sum(v.agreed for v in verdicts) / len(verdicts) if verdicts else 0.0


def _judge_params(params: SamplingParams | None) -> SamplingParams:
    return params if params is not None else SamplingParams(max_new_tokens=512, temperature=0.0)


class PairwiseJudge:
    """Asks a ChatBackend which of two answers is better, in both orders (one batched request)."""

    def __init__(self, backend: ChatBackend, params: SamplingParams | None = None,
                 template: str = PAIRWISE_TEMPLATE, seed: int = 0):
        self.backend = backend
        self.params = _judge_params(params).model_copy(update={"n": 1})
        self.template = template
        self.seed = seed

    def judge(self, prompts: list[Prompt], firsts: list[list[Message]],
              seconds: list[list[Message]]) -> list[PairVerdict]:
        """One verdict per (prompt, first answer, second answer)."""
        conversations, seeds = [], []
        for prompt, first, second in zip(prompts, firsts, seconds, strict=True):
            shown = render_transcript(prompt.messages)
            for order, (a, b) in enumerate(((first, second), (second, first))):
                text = self.template.format(conversation=shown, answer_a=render_transcript(a),
                                            answer_b=render_transcript(b))
                conversations.append(([Message(role="user", content=text)], None))
                seeds.append(derive_seed(self.seed, prompt.id, "pairwise", order))
        replies = [samples[0].messages[-1].content or "" for samples in
                   self.backend.chat(conversations, self.params, seeds=seeds)]
        return [combine_orders(parse_pairwise(replies[2 * i]), parse_pairwise(replies[2 * i + 1]),
                               (replies[2 * i], replies[2 * i + 1]))
                for i in range(len(prompts))]


class JudgeScorer:
    """Single-answer grading (1-10) as a Scorer: value = rating / 10, NaN when the judge gave no rating."""

    def __init__(self, backend: ChatBackend, params: SamplingParams | None = None,
                 template: str = SINGLE_TEMPLATE, seed: int = 0, name: str = "llm_judge"):
        self.backend = backend
        self.params = _judge_params(params).model_copy(update={"n": 1})
        self.template = template
        self.seed = seed
        self.name = name

    def score(self, prompts: list[Prompt], responses: list[list[Message]]) -> list[Score]:
        conversations = [([Message(role="user", content=self.template.format(
            conversation=render_transcript(p.messages), answer=render_transcript(r)))], None)
            for p, r in zip(prompts, responses, strict=True)]
        # Seeded by content, not position, so a response gets the same grade in any batch.
        seeds = [derive_seed(self.seed, p.id, "single", content_hash([m.model_dump(mode="json") for m in r]))
                 for p, r in zip(prompts, responses)]
        samples = self.backend.chat(conversations, self.params, seeds=seeds)
        return [_rating_score(s[0].messages[-1].content or "") for s in samples]


def _rating_score(reply: str) -> Score:
    rating = parse_rating(reply)
    if rating is None:
        return Score(math.nan, f"judge gave no rating: {reply[-200:]}")
    return Score(rating / 10.0, f"rating {rating:g}/10: {reply[-200:]}")
