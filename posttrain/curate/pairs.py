"""Preference pairs from scored samples: a pairing strategy, then filters that drop with a reason.

From each Completion (a prompt with K scored responses) a strategy picks (chosen, rejected) pairs:

- `best_vs_worst`: the top response against the bottom one (the widest gap; Nemotron-4, Baichuan 2);
- `best_vs_random_lower`: the top response against a random lower-scored one (seeded by prompt);
- `all_ranked_pairs`: every pair of the ranked list with a strict score difference (Llama 3 turns
  edited > chosen > rejected into all its ordered pairs).

A prompt whose samples all fail has nothing to prefer among them; `with_references` adds a known-good
answer (a reference solution) to each prompt's responses with a fixed score, so such a prompt pairs
its reference against its worst sample (SPIN, Chen et al. 2024, pairs references against policy
samples; Llama 3 ranks a human-edited answer above the sampled ones). The reference sorts after
sampled responses of the same score, so a passing sample is still preferred as the chosen answer.

Then pairs whose score gap is below `min_gap` and pairs whose two responses are near-identical
(ROUGE-L F above `max_similarity`, as Baichuan 2 and Llama 3 filter) are dropped. Each kept pair
records both scores (and rewards when the responses have them) and a preference strength from the
gap, in Llama 3's four levels.
"""
from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from posttrain.data.records import (Completion, Conversation, Message, PreferencePair, PreferenceStrength, Response,
                                    content_hash)
from posttrain.data.similarity import rouge_l_f

OnDrop = Callable[[str, str, dict[str, Any]], None]  # (reason, detail, row)
RankBy = Literal["score", "reward"]


@dataclass(frozen=True)
class PairOptions:
    """How pairs are chosen and filtered. `strength_gaps` are the smallest gaps for significantly
    better / better / slightly better (anything smaller is negligibly better), in the rank's units."""

    strategy: str = "best_vs_worst"
    rank_by: RankBy = "score"
    min_gap: float = 0.0
    max_similarity: float = 0.9
    strength_gaps: tuple[float, float, float] = (0.75, 0.5, 0.25)
    seed: int = 0


def value_of(response: Response, rank_by: RankBy) -> float | None:
    """The response's score or reward; None when it has none (or NaN: a judge that gave no grade)."""
    value = response.score if rank_by == "score" else response.reward
    return None if value is None or math.isnan(value) else value


def strength_of(gap: float, gaps: tuple[float, float, float]) -> PreferenceStrength:
    """Llama 3's four preference levels from a score gap."""
    significantly, better, slightly = gaps
    if gap >= significantly:
        return "significantly_better"
    if gap >= better:
        return "better"
    if gap >= slightly:
        return "slightly_better"
    return "negligibly_better"


# ------------------------------------------------------------------------------------------ strategies
# Each takes the responses ranked best first, their values, and a per-prompt rng; returns index pairs.

def best_vs_worst(values: list[float], rng: random.Random) -> list[tuple[int, int]]:
    return [(0, len(values) - 1)] if values[0] > values[-1] else []


def best_vs_random_lower(values: list[float], rng: random.Random) -> list[tuple[int, int]]:
    lower = [j for j in range(1, len(values)) if values[j] < values[0]]
    return [(0, rng.choice(lower))] if lower else []


def all_ranked_pairs(values: list[float], rng: random.Random) -> list[tuple[int, int]]:
    return [(i, j) for i in range(len(values)) for j in range(i + 1, len(values)) if values[i] > values[j]]


STRATEGIES: dict[str, Callable[[list[float], random.Random], list[tuple[int, int]]]] = {
    "best_vs_worst": best_vs_worst,
    "best_vs_random_lower": best_vs_random_lower,
    "all_ranked_pairs": all_ranked_pairs,
}


# ------------------------------------------------------------------------------------------ references

def prompt_key(messages: list[Message]) -> str:
    """The identity of a conversation's prompt part, for matching references to sampled prompts."""
    return content_hash([m.model_dump(mode="json", exclude_none=True) for m in messages])


def reference_answers(conversations: list[Conversation]) -> dict[str, list[Message]]:
    """{prompt key: answer} of conversations cut after their last user turn (the first one per prompt)."""
    answers: dict[str, list[Message]] = {}
    for conversation in conversations:
        messages = conversation.messages
        last_user = max(i for i, m in enumerate(messages) if m.role == "user")
        answers.setdefault(prompt_key(messages[:last_user + 1]), messages[last_user + 1:])
    return answers


def with_references(completions: list[Completion], answers: dict[str, list[Message]],
                    score: float) -> tuple[list[Completion], set[str]]:
    """The completions, each with its prompt's reference answer (if any) appended as a response
    scored `score`; and the ids of the added responses (a pair's `meta.chosen_id` among them: a
    reference-chosen pair)."""
    out, reference_ids = [], set()
    for completion in completions:
        answer = answers.get(prompt_key(completion.prompt.messages))
        if answer is None:
            out.append(completion)
            continue
        reference = Response(index=len(completion.responses), messages=answer, score=score, reason="reference answer")
        joined = Completion(prompt=completion.prompt, responses=[*completion.responses, reference],
                            meta=completion.meta)
        reference_ids.add(joined.responses[-1].id)
        out.append(joined)
    return out, reference_ids


# ------------------------------------------------------------------------------------------ building

def ranked(completion: Completion, rank_by: RankBy, on_drop: OnDrop) -> list[tuple[Response, float]]:
    """The completion's usable responses with their values, best first (stable for ties).

    Responses without a value or without an answer are dropped with a reason.
    """
    kept = []
    for response in completion.responses:
        value = value_of(response, rank_by)
        if not response.messages:
            on_drop("no_answer", f"response {response.index} has no messages ({response.finish_reason})",
                    {"completion": completion.id, "response": response.id})
        elif value is None:
            on_drop("unscored", f"response {response.index} has no {rank_by}",
                    {"completion": completion.id, "response": response.id})
        else:
            kept.append((response, value))
    return sorted(kept, key=lambda item: -item[1])


def build_pairs(completions: list[Completion], options: PairOptions, on_drop: OnDrop) -> Iterator[PreferencePair]:
    """Pairs from every completion, in input order; what is not kept goes to `on_drop` with a reason."""
    if options.strategy not in STRATEGIES:
        raise ValueError(f"unknown pair strategy {options.strategy!r}; known: {', '.join(STRATEGIES)}")
    pick = STRATEGIES[options.strategy]
    for completion in completions:
        responses = ranked(completion, options.rank_by, on_drop)
        if len(responses) < 2:
            on_drop("too_few_responses", f"{len(responses)} scored response(s)", {"completion": completion.id})
            continue
        values = [value for _, value in responses]
        candidates = pick(values, random.Random(f"{options.seed}:{completion.prompt.id}"))
        if not candidates:
            on_drop("no_score_difference", f"all {len(values)} responses score {values[0]:g}",
                    {"completion": completion.id})
            continue
        for i, j in candidates:
            pair = _filtered_pair(completion, responses[i], responses[j], options, on_drop)
            if pair is not None:
                yield pair


def balance_tags(pairs: list[PreferencePair], tags: list[str], seed: int, on_drop: OnDrop) -> list[PreferencePair]:
    """Within a family, cap the pairs of each of `tags` at the count of the rarest of them.

    Llama 3 balances adversarial and borderline safety prompts so that preference data teaches both
    refusing and not over-refusing: with `tags = [unsafe, safe_lookalike]`, a family holding 20
    look-alike pairs and 5 unsafe ones keeps 5 of each (a seeded random choice, input order kept).
    Families whose prompts carry none of `tags` are left alone.
    """
    groups: dict[str, dict[str, list[int]]] = {}  # family -> tag -> pair indices
    for index, pair in enumerate(pairs):
        tag = next((t for t in tags if t in (pair.prompt.tags or [])), None)
        if tag is not None:
            groups.setdefault(pair.prompt.family or "", {t: [] for t in tags})[tag].append(index)
    dropped: set[int] = set()
    for family, by_tag in groups.items():
        cap = min(len(members) for members in by_tag.values())
        for tag, members in by_tag.items():
            keep = set(random.Random(f"{seed}:balance:{family}:{tag}").sample(members, cap))
            for index in (i for i in members if i not in keep):
                dropped.add(index)
                on_drop("balanced", f"family {family!r}: tag {tag!r} capped at {cap} pairs", {"pair": pairs[index].id})
    return [pair for index, pair in enumerate(pairs) if index not in dropped]


def _filtered_pair(completion: Completion, chosen: tuple[Response, float], rejected: tuple[Response, float],
                   options: PairOptions, on_drop: OnDrop) -> PreferencePair | None:
    """The pair, or None after `on_drop` when its gap is too small or its responses near-identical."""
    (good, good_value), (bad, bad_value) = chosen, rejected
    gap = good_value - bad_value
    row = {"completion": completion.id, "chosen": good.id, "rejected": bad.id}
    if gap < options.min_gap:
        on_drop("small_gap", f"score gap {gap:.3g} < min_gap {options.min_gap:g}", row)
        return None
    similarity = rouge_l_f(good.text, bad.text)
    if similarity > options.max_similarity:
        on_drop("near_identical", f"ROUGE-L F {similarity:.3f} > {options.max_similarity:g}", row)
        return None
    return PreferencePair(
        prompt=completion.prompt, chosen=good.messages, rejected=bad.messages,
        chosen_score=_finite(good.score), rejected_score=_finite(bad.score),
        chosen_reward=_finite(good.reward), rejected_reward=_finite(bad.reward),
        strength=strength_of(gap, options.strength_gaps),
        meta={**completion.meta.model_dump(exclude_none=True), "completion": completion.id, "chosen_id": good.id,
              "rejected_id": bad.id, "strategy": options.strategy, "gap": gap, "rouge_l": round(similarity, 4)},
    )


def _finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value
