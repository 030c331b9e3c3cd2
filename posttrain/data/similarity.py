"""Text similarity for near-duplicate filters: ROUGE-L over word tokens, with a bit-parallel LCS.

ROUGE-L (Lin, 2004) compares two texts by their longest common subsequence of tokens:
P = LCS / len(candidate), R = LCS / len(reference), F = 2PR / (P + R). Baichuan 2 drops near-identical
responses with it, and Llama 3 filters similar preference pairs the same way.

The LCS length uses Hyyro's bit-vector recurrence (one Python big-int per text, one add, two ands,
an or and a subtraction per token of the other text): O(n * m / word) instead of the O(n * m)
table, which matters when every pair of K samples of every prompt is compared.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_WORD = re.compile(r"\w+", re.UNICODE)


def word_tokens(text: str) -> list[str]:
    """Lower-cased runs of letters, digits and underscores: punctuation and spacing do not count."""
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists.

    Bit i of V is 0 where a's prefix [0..i] gained a match: for each token of b, with M the positions
    of that token in a, U = V & M and V = (V + U) | (V - U); the LCS is the number of 0 bits in V
    (Hyyro 2004, "Bit-parallel LCS-length computation revisited").
    """
    if len(a) < len(b):
        a, b = b, a  # the longer text becomes the bit vector: fewer iterations
    if not b:
        return 0
    positions: dict[str, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | (1 << i)
    mask = (1 << len(a)) - 1
    v = mask
    for token in b:
        u = v & positions.get(token, 0)
        v = ((v + u) | (v - u)) & mask
    return len(a) - bin(v).count("1")


@dataclass(frozen=True)
class RougeL:
    precision: float
    recall: float
    f: float


def rouge_l(candidate: str, reference: str) -> RougeL:
    """ROUGE-L of `candidate` against `reference` on word tokens (two empty texts are identical)."""
    cand, ref = word_tokens(candidate), word_tokens(reference)
    if not cand and not ref:
        return RougeL(1.0, 1.0, 1.0)
    lcs = lcs_length(cand, ref)
    if lcs == 0:
        return RougeL(0.0, 0.0, 0.0)
    precision, recall = lcs / len(cand), lcs / len(ref)
    return RougeL(precision, recall, 2 * precision * recall / (precision + recall))


def rouge_l_f(a: str, b: str) -> float:
    """ROUGE-L F between two texts (symmetric)."""
    return rouge_l(a, b).f
