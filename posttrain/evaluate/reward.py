"""How well a reward model ranks: held-out pairwise accuracy and best-of-N gain, per family.

Both start from the same data: N responses sampled from a policy for each held-out prompt, graded by
the task's grader and scored by the reward model.
- Pairwise accuracy (RewardBench, Lambert et al. 2024): pairs of a passing and a failing response
  to one prompt; a pair counts when the passing one gets the strictly higher reward (ties are
  wrong). Per family, per RewardBench category (a mapping the caller gives) and overall, with 95%
  Wilson intervals.
- Best-of-N gain: the grade of the reward model's pick among N samples minus the mean grade of those
  N samples (and minus the greedy answer's grade, when given). The K samples of a prompt are cut
  into K / N disjoint blocks of N and the gain averaged over blocks, so N = 4 uses all 16 samples.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from posttrain.data.records import Message, Prompt
from posttrain.evaluate.intervals import wilson_interval
from posttrain.generate.base import Generator, SamplingParams
from posttrain.generate.chat import generate_chat
from posttrain.judge.grader import Grade, Grader
from posttrain.judge.scorer import Scorer

ToolHook = Callable[..., str]


def accuracy_table(correct: Sequence[bool], groups: Sequence[Sequence[str]]) -> dict[str, dict[str, float]]:
    """{group: {score, low, high, n}} of the share of True, per group (a pair may be in several)."""
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for ok, names in zip(correct, groups):
        for name in names:
            tally[name][0] += int(ok)
            tally[name][1] += 1
    table = {}
    for name in sorted(tally):
        hits, n = tally[name]
        low, high = wilson_interval(hits, n)
        table[name] = {"score": round(hits / n, 4), "low": round(low, 4), "high": round(high, 4), "n": n}
    return table


def passing_failing_pairs(passed: Sequence[bool], per_prompt: int, rng: random.Random) -> list[tuple[int, int]]:
    """Up to `per_prompt` distinct (passing, failing) index pairs among one prompt's samples."""
    good = [i for i, ok in enumerate(passed) if ok]
    bad = [i for i, ok in enumerate(passed) if not ok]
    every = [(g, b) for g in good for b in bad]
    return every if len(every) <= per_prompt else rng.sample(every, per_prompt)


def best_of_n_gain(rewards: Sequence[float], grades: Sequence[float], n: int) -> tuple[float, float]:
    """(mean grade of the reward model's pick, mean grade of all samples) over the K // n blocks of n.

    The pick is the highest reward in a block (the first one on ties).
    """
    blocks = len(rewards) // n
    if blocks == 0:
        raise ValueError(f"best-of-{n} needs at least {n} samples, got {len(rewards)}")
    picked = mean = 0.0
    for b in range(blocks):
        block = range(b * n, (b + 1) * n)
        best = max(block, key=lambda i: (rewards[i], -i))
        picked += grades[best]
        mean += sum(grades[i] for i in block) / n
    return picked / blocks, mean / blocks


def best_of_n_table(rewards: Sequence[Sequence[float]], grades: Sequence[Sequence[float]], families: Sequence[str],
                    ns: Sequence[int], greedy: Sequence[float] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{family (and 'overall'): {str(n): {pick, mean, gain[, greedy, gain_vs_greedy], n_prompts}}}."""
    sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    for index, (r, g, family) in enumerate(zip(rewards, grades, families)):
        for n in ns:
            pick, mean = best_of_n_gain(r, g, n)
            for name in (family, "overall"):
                acc = sums[(name, n)]
                acc[0] += pick
                acc[1] += mean
                acc[2] += greedy[index] if greedy is not None else 0.0
                acc[3] += 1
    table: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for (name, n), (pick, mean, greedy_sum, count) in sorted(sums.items()):
        row = {"pick": pick / count, "mean": mean / count, "gain": (pick - mean) / count, "n_prompts": count}
        if greedy is not None:
            row.update(greedy=greedy_sum / count, gain_vs_greedy=(pick - greedy_sum) / count)
        table[name][str(n)] = row
    return dict(table)


@dataclass
class RewardEvalResult:
    accuracy: dict[str, dict[str, float]]  # family and 'overall' -> {score, low, high, n}
    category_accuracy: dict[str, dict[str, float]]  # RewardBench category -> {score, low, high, n}
    best_of_n: dict[str, dict[str, dict[str, float]]]  # family -> str(N) -> gains
    pass_rates: dict[str, float] = field(default_factory=dict)  # family -> share of passing samples
    rewards: list[list[float]] = field(default_factory=list)  # per prompt, per sample
    grades: list[list[Grade]] = field(default_factory=list)  # per prompt, per sample


def evaluate_reward_model(scorer: Scorer, grader: Grader, prompts: list[Prompt],
                          samples: list[list[list[Message]]], *, ns: Sequence[int] = (1, 4, 16),
                          greedy: list[list[Message]] | None = None, category_of: dict[str, str] | None = None,
                          pairs_per_prompt: int = 4, seed: int = 0) -> RewardEvalResult:
    """Grade and score `samples[i]` (K responses to prompts[i]); accuracy and best-of-N tables."""
    flat_prompts = [p for p, responses in zip(prompts, samples) for _ in responses]
    flat_responses = [r for responses in samples for r in responses]
    grades: list[Grade] = [grader.grade(p, r) for p, r in zip(flat_prompts, flat_responses)]
    rewards = [s.value for s in scorer.score(flat_prompts, flat_responses)]
    rng = random.Random(seed)
    correct, groups, categories = [], [], []
    per_prompt_rewards, per_prompt_grades, families = [], [], []
    pass_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    start = 0
    for prompt, responses in zip(prompts, samples):
        k = len(responses)
        r, g = rewards[start:start + k], grades[start:start + k]
        start += k
        family = prompt.family or "unknown"
        for i, j in passing_failing_pairs([x.passed for x in g], pairs_per_prompt, rng):
            correct.append(r[i] > r[j])
            groups.append([family, "overall"])
            categories.append([(category_of or {}).get(family, family), "overall"])
        per_prompt_rewards.append(r)
        per_prompt_grades.append(g)
        families.append(family)
        pass_counts[family][0] += sum(x.passed for x in g)
        pass_counts[family][1] += k
    greedy_grades = [grader.grade(p, r).score for p, r in zip(prompts, greedy)] if greedy is not None else None
    return RewardEvalResult(
        accuracy=accuracy_table(correct, groups),
        category_accuracy=accuracy_table(correct, categories),
        best_of_n=best_of_n_table(per_prompt_rewards, [[x.score for x in g] for g in per_prompt_grades], families,
                                  ns, greedy_grades),
        pass_rates={f: hits / n for f, (hits, n) in sorted(pass_counts.items())},
        rewards=per_prompt_rewards,
        grades=per_prompt_grades,
    )


def sample_responses(generator: Generator, tokenizer, prompts: list[Prompt], k: int, params: SamplingParams, *,
                     template: str, tool_hook: ToolHook | None = None,
                     max_tool_rounds: int = 2) -> list[list[list[Message]]]:
    """k sampled replies per prompt (each prompt repeated k times; seeded by params.seed)."""
    conversations = [(p.messages, p.tools) for p in prompts for _ in range(k)]
    replies = generate_chat(generator, tokenizer, conversations, params, template=template, tool_hook=tool_hook,
                            max_tool_rounds=max_tool_rounds)
    return [replies[i * k:(i + 1) * k] for i in range(len(prompts))]
