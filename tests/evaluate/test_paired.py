"""Paired differences of two evaluations, against values worked by hand."""
import math

import pytest

from posttrain.evaluate.paired import paired_difference


def test_paired_difference_by_hand():
    scores = {"a": ("f", 1.0), "b": ("f", 0.0), "c": ("g", 1.0)}
    baseline = {"a": ("f", 0.0), "b": ("f", 0.0), "c": ("g", 1.0), "d": ("g", 0.0)}  # d is not shared
    table = paired_difference(scores, baseline)
    # f: deltas [1, 0]: mean 0.5, sd sqrt(0.5), half-width 1.96 * sqrt(0.5) / sqrt(2) = 0.98.
    assert table["f"] == {"diff": 0.5, "low": -0.48, "high": 1.48, "n": 2, "better": 1, "worse": 0}
    # g: one delta of 0: no spread.
    assert table["g"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "n": 1, "better": 0, "worse": 0}
    # overall: deltas [1, 0, 0]: mean 1/3, sd sqrt(1/3), half-width 1.96 * sqrt(1/3) / sqrt(3) = 0.6533.
    overall = table["overall"]
    assert overall["n"] == 3 and overall["diff"] == pytest.approx(1 / 3, abs=1e-4)
    assert overall["high"] - overall["diff"] == pytest.approx(1.96 * math.sqrt(1 / 3) / math.sqrt(3), abs=1e-3)


def test_paired_difference_needs_shared_prompts():
    with pytest.raises(ValueError, match="share no prompt id"):
        paired_difference({"a": ("f", 1.0)}, {"b": ("f", 1.0)})
