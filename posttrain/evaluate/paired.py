"""Paired comparison of two evaluations of the same prompts.

Two models scored on the same held-out prompts differ far less noisily prompt by prompt than their
separate intervals suggest: the mean of the per-prompt differences, with a normal 95% interval
(mean +- 1.96 sd / sqrt(n)), and how many prompts got better or worse, per family and overall.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Mapping


def paired_difference(scores: Mapping[str, tuple[str, float]], baseline: Mapping[str, tuple[str, float]],
                      z: float = 1.96) -> dict[str, dict[str, float]]:
    """{family and 'overall': {diff, low, high, n, better, worse}} over the prompt ids both hold.

    `scores` and `baseline` map prompt id -> (family, score). Raises when no prompt is shared.
    """
    shared = sorted(set(scores) & set(baseline))
    if not shared:
        raise ValueError("the two evaluations share no prompt id: a paired comparison needs the same prompts")
    by_family: dict[str, list[float]] = defaultdict(list)
    for pid in shared:
        family, score = scores[pid]
        delta = score - baseline[pid][1]
        by_family[family].append(delta)
        by_family["overall"].append(delta)
    table = {}
    for family in sorted(by_family):
        deltas = by_family[family]
        n = len(deltas)
        mean = sum(deltas) / n
        sd = math.sqrt(sum((d - mean) ** 2 for d in deltas) / (n - 1)) if n > 1 else 0.0
        half = z * sd / math.sqrt(n)
        table[family] = {"diff": round(mean, 4), "low": round(mean - half, 4), "high": round(mean + half, 4), "n": n,
                         "better": sum(d > 0 for d in deltas), "worse": sum(d < 0 for d in deltas)}
    return table
