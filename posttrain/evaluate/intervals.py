"""Confidence intervals for scores."""
from __future__ import annotations

import math


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson, 1927), 95% by default.

    Unlike the normal approximation it stays inside [0, 1] and behaves at 0 and n successes.
    `successes` may be fractional (a mean of partial scores times n), which treats the mean score
    as the proportion.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))
