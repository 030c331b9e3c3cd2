import pytest

from posttrain.evaluate.intervals import wilson_interval


def test_wilson_hand_worked():
    # p = 0.5, n = 100, z = 1.96: centre = (0.5 + 0.019208) / 1.038416 = 0.5;
    # half = 1.96 * sqrt(0.0025 + 0.00009604) / 1.038416 = 1.96 * 0.050951 / 1.038416 = 0.096170
    low, high = wilson_interval(50, 100)
    assert low == pytest.approx(0.5 - 0.096170, abs=1e-5)
    assert high == pytest.approx(0.5 + 0.096170, abs=1e-5)


def test_wilson_edges_stay_in_unit_interval():
    low, high = wilson_interval(0, 20)
    assert low == 0.0 and 0.0 < high < 0.2
    low, high = wilson_interval(20, 20)
    assert high == 1.0 and 0.8 < low < 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
