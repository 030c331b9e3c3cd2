import time

import pytest

from posttrain.train.step_log import StepLogger


def test_logs_every_n_steps_with_throughput_and_mfu():
    rows = []
    logger = StepLogger(rows.append, log_every=2, num_params=1000, peak_flops=1e9, enabled=True)
    assert logger.record(1, {"loss": 2.0}, tokens=300) is None
    time.sleep(0.01)
    row = logger.record(2, {"loss": 1.5}, tokens=100)
    assert rows == [row] and row["step"] == 2 and row["loss"] == 1.5
    assert 0 < row["tokens_per_s"] < 400 / 0.01  # 400 tokens over at least 10 ms
    assert row["mfu"] == pytest.approx(6 * 1000 * row["tokens_per_s"] / 1e9)


def test_no_mfu_without_peak_and_silent_off_the_main_process():
    rows = []
    quiet = StepLogger(rows.append, log_every=1, num_params=10, peak_flops=None, enabled=False)
    row = quiet.record(1, {"loss": 1.0}, tokens=5)
    assert "mfu" not in row and rows == []
