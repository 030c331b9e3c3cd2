"""ROUGE-L: the bit-parallel LCS equals the textbook table; F worked out by hand."""
import random

import pytest

from posttrain.data.similarity import lcs_length, rouge_l, rouge_l_f, word_tokens


def table_lcs(a: list[str], b: list[str]) -> int:
    """The O(n*m) dynamic programme."""
    rows = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            rows[i + 1][j + 1] = rows[i][j] + 1 if x == y else max(rows[i][j + 1], rows[i + 1][j])
    return rows[-1][-1]


def test_bit_parallel_lcs_equals_the_table():
    rng = random.Random(0)
    for _ in range(500):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]  # past 64: more than one machine word
        b = [rng.choice("abcde") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == table_lcs(a, b) == lcs_length(b, a)


def test_lcs_by_hand():
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4  # BCBA (CLRS)
    assert lcs_length([], ["x"]) == 0
    assert lcs_length(["a", "a"], ["a"]) == 1


def test_rouge_l_by_hand():
    # candidate "the cat sat" vs reference "the cat sat down": LCS 3, P = 1, R = 3/4, F = 6/7.
    score = rouge_l("The cat sat!", "the cat sat down")
    assert score.precision == 1.0 and score.recall == 0.75
    assert score.f == pytest.approx(2 * 0.75 / 1.75)
    assert rouge_l_f("a b", "c d") == 0.0
    assert rouge_l_f("", "") == 1.0 and rouge_l_f("", "x") == 0.0
    assert rouge_l_f("Answer: 19", "answer 19") == 1.0  # case and punctuation do not count


def test_word_tokens():
    assert word_tokens("Hello, World! x_1 42") == ["hello", "world", "x_1", "42"]


def test_long_texts_are_fast():
    import time

    rng = random.Random(1)
    words = [f"w{rng.randint(0, 50)}" for _ in range(2000)]
    other = [f"w{rng.randint(0, 50)}" for _ in range(2000)]
    start = time.perf_counter()
    rouge_l_f(" ".join(words), " ".join(other))
    assert time.perf_counter() - start < 0.5  # a 2000 x 2000 table takes seconds in Python
