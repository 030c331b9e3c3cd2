"""Every merge method on hand-worked tensors, block-size invariance, and the EMA update."""
import math

import pytest
import torch

from posttrain.merge.blockwise import gram, magnitude_threshold
from posttrain.merge.ema import ema_update, ema_update_all
from posttrain.merge.methods import (
    METHODS,
    MergeParams,
    MergeWarning,
    dare,
    disjoint_mean,
    linear,
    model_stock,
    model_stock_t,
    slerp,
    task_arithmetic,
    ties,
    warp,
)

torch.set_num_threads(1)
T = lambda *values: torch.tensor(values, dtype=torch.float32)  # noqa: E731
ROOT_HALF = math.sqrt(0.5)


# ---------------------------------------------------------------- linear, task arithmetic


def test_linear_of_two_is_their_mean_and_weights_normalise():
    a, b = T(1.0, 2.0, -4.0), T(3.0, 6.0, 0.0)
    assert torch.equal(linear([a, b], [1, 1]), T(2.0, 4.0, -2.0))
    assert torch.equal(linear([a, b], [1, 3]), T(2.5, 5.0, -1.0))  # (1 a + 3 b) / 4


def test_task_arithmetic_adds_the_scaled_sum_of_task_vectors():
    base = T(1.0, 1.0)
    x1, x2 = T(2.0, 0.0), T(1.0, 3.0)  # d1 = (1, -1), d2 = (0, 2): sum (1, 1)
    assert torch.equal(task_arithmetic([x1, x2], base, [1, 1], scale=0.5), T(1.5, 1.5))
    assert torch.equal(task_arithmetic([x1, x2], base, [2, 1], scale=1.0), T(3.0, 1.0))  # b + 2 d1 + d2


# ---------------------------------------------------------------- TIES, DARE

BASE4 = T(1.0, 1.0, 1.0, 1.0)
D1, D2, D3 = T(3.0, -1.0, 0.5, -2.0), T(-1.0, -2.0, 1.0, 4.0), T(2.0, 1.5, -0.25, -1.0)


def test_ties_elects_the_sign_of_the_sum_and_averages_only_agreeing_entries():
    # sums (4, -1.5, 1.25, 1) elect (+, -, +, +); agreeing means: (3+2)/2, (-1-2)/2, (0.5+1)/2, 4
    merged = ties([BASE4 + D1, BASE4 + D2, BASE4 + D3], BASE4, [1, 1, 1], density=1.0)
    assert torch.allclose(merged, BASE4 + T(2.5, -1.5, 0.75, 4.0))


def test_ties_trims_each_task_vector_to_its_top_magnitudes_first():
    # density 0.5 keeps 2 of 4: (3, 0, 0, -2), (0, -2, 0, 4), (2, 1.5, 0, 0); sums (5, -0.5, 0, 2)
    # elect (+, -, none, +): 2.5, -2 (only d2 agrees), 0 (no sign), 4 (d2; d1's -2 disagrees)
    merged = ties([BASE4 + D1, BASE4 + D2, BASE4 + D3], BASE4, [1, 1, 1], density=0.5)
    assert torch.allclose(merged, BASE4 + T(2.5, -2.0, 0.0, 4.0))


def test_ties_weights_enter_the_election_and_the_mean():
    # weights (1, 3): entry 0: 1*3 + 3*(-1) = 0 -> no sign -> 0; entry 1: both negative -> (1*-1 + 3*-2)/4
    merged = disjoint_mean([D1[:2], D2[:2]], [1.0, 3.0])
    assert torch.allclose(merged, T(0.0, -1.75))


def test_magnitude_threshold_is_the_kth_largest_magnitude():
    assert magnitude_threshold(D1, torch.zeros(4), 0.5) == 2.0
    assert magnitude_threshold(D1, torch.zeros(4), 0.25) == 3.0
    assert magnitude_threshold(D1, torch.zeros(4), 1.0) == 0.0


def test_dare_drops_and_rescales_unbiasedly_and_deterministically_per_tensor_name():
    base = torch.zeros(20_000)
    model = torch.full((20_000,), 2.0)
    dropped = dare([model], base, [1.0], density=0.25, seed=7, name="layer.weight")
    assert set(dropped.unique().tolist()) <= {0.0, 8.0}  # kept entries are 2 / 0.25
    assert abs(dropped.mean().item() - 2.0) < 0.1  # E[d~] = d
    again = dare([model], base, [1.0], density=0.25, seed=7, name="layer.weight", block=999)
    other = dare([model], base, [1.0], density=0.25, seed=7, name="other.weight")
    assert torch.equal(dropped, again)  # same seed and name, any block size
    assert not torch.equal(dropped, other)


def test_dare_at_density_one_is_task_arithmetic_or_ties():
    models = [BASE4 + D1, BASE4 + D2]
    assert torch.equal(dare(models, BASE4, [0.5, 0.5], 1.0, 0, "w", "linear"),
                       task_arithmetic(models, BASE4, [0.5, 0.5]))
    assert torch.equal(dare(models, BASE4, [1, 1], 1.0, 0, "w", "ties"), ties(models, BASE4, [1, 1], 1.0))


# ---------------------------------------------------------------- SLERP, Model Stock, WARP


def test_slerp_endpoints_midpoint_and_colinear_fallback():
    a, b = T(1.0, 0.0), T(0.0, 1.0)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.equal(slerp(a, b, 1.0), b)
    assert torch.allclose(slerp(a, b, 0.5), T(ROOT_HALF, ROOT_HALF))  # on the unit circle, not (0.5, 0.5)
    assert torch.allclose(slerp(T(1.0, 2.0), T(2.0, 4.0), 0.5), T(1.5, 3.0))  # colinear: linear


def test_slerp_of_task_vectors_rotates_around_the_base():
    base = T(1.0, 1.0)
    assert torch.allclose(slerp(T(2.0, 1.0), T(1.0, 2.0), 0.5, base), base + T(ROOT_HALF, ROOT_HALF))


def test_model_stock_t_for_known_angles():
    assert model_stock_t(0.5, 2) == pytest.approx(2 / 3)  # 60 degrees, two models
    assert model_stock_t(0.5, 3) == pytest.approx(0.75)
    assert model_stock_t(1.0, 4) == 1.0 and model_stock_t(0.0, 2) == 0.0


def test_model_stock_interpolates_the_average_towards_the_base_by_t():
    base = T(1.0, 1.0)
    d1, d2 = T(1.0, 0.0), T(0.5, math.sqrt(3) / 2)  # 60 degrees apart: t = 2/3
    merged = model_stock([base + d1, base + d2], base)
    assert torch.allclose(merged, base + (2 / 3) * (d1 + d2) / 2)


def test_model_stock_clamps_t_with_a_warning_when_the_cosine_is_negative():
    base = T(1.0, 1.0)
    with pytest.warns(MergeWarning, match="layer.0.*clamped"):
        merged = model_stock([base + T(1.0, 0.0), base + T(-1.0, 0.1)], base, name="layer.0")
    assert torch.allclose(merged, base)  # 2 cos / (1 + cos) < 0 -> t = 0: the base


def test_warp_slerps_task_vectors_then_moves_towards_the_init_by_eta():
    base = T(1.0, 1.0)
    models = [base + T(1.0, 0.0), base + T(0.0, 1.0)]
    assert torch.allclose(warp(models, base, eta=1.0), base + T(ROOT_HALF, ROOT_HALF))
    assert torch.allclose(warp(models, base, eta=0.5), base + 0.5 * T(ROOT_HALF, ROOT_HALF))
    assert torch.allclose(warp(models, base, eta=0.0), base)


def test_warp_folds_more_than_two_runs_pairwise_with_t_one_over_m():
    base = torch.zeros(3)
    models = [T(1.0, 0.0, 0.0), T(0.0, 1.0, 0.0), T(0.0, 0.0, 1.0)]
    # D_2 = slerp(e1, e2, 1/2) = (r, r, 0), r = sqrt(1/2); D_3 = slerp(D_2, e3, 1/3) at 90 degrees:
    # sin(60) D_2 + sin(30) e3 = (sqrt(3)/2 r, sqrt(3)/2 r, 1/2): a running mean, not exactly symmetric
    merged = warp(models, base, eta=1.0)
    third = math.sqrt(3) / 2 * ROOT_HALF
    assert torch.allclose(merged, T(third, third, 0.5), atol=1e-6)


# ---------------------------------------------------------------- exactness and blocks


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merging_a_tensor_with_itself_returns_it_bit_for_bit(method):
    x, base = torch.randn(5, 7, generator=torch.Generator().manual_seed(0)), torch.randn(5, 7)
    params = MergeParams(weights=(0.3, 0.7), density=1.0)
    if method in ("ties", "dare_ties"):
        params = MergeParams(density=1.0)  # equal weights: the disjoint mean of (d, d) is exactly d
    if method in ("task_arithmetic", "warp"):
        xs = [x]  # one task vector added back at lambda 1 (eta 1) is the model itself
        params = MergeParams()
    else:
        xs = [x, x]
    spec = METHODS[method]
    merged = spec.merge(xs, None if spec.base == "unused" else base, params, "w")
    assert torch.equal(merged, x)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_block_size_does_not_change_the_result(method, monkeypatch):
    import posttrain.merge.methods as methods

    g = torch.Generator().manual_seed(1)
    base = torch.randn(6, 50, generator=g)
    shared = torch.randn(6, 50, generator=g)  # the runs agree in part: positive cosines
    xs = [base + 0.1 * (shared + torch.randn(6, 50, generator=g)) for _ in range(2)]
    params = MergeParams(density=0.5, t=0.3, eta=0.7)
    spec = METHODS[method]
    whole = spec.merge(xs, None if spec.base == "unused" else base, params, "w")
    for name in ("linear", "task_arithmetic", "ties", "dare", "slerp", "model_stock", "warp"):
        original = getattr(methods, name)
        monkeypatch.setattr(methods, name, lambda *a, _f=original, **k: _f(*a, **{**k, "block": 7}))
    blocked = spec.merge(xs, None if spec.base == "unused" else base, params, "w")
    assert torch.allclose(whole, blocked, atol=1e-6)


def test_gram_of_equal_vectors_gives_a_cosine_of_exactly_one():
    v = torch.randn(100_003)
    g = gram([v, v.clone()], None, block=4096)
    assert g[0][1] / math.sqrt(g[0][0] * g[1][1]) == 1.0


# ---------------------------------------------------------------- EMA


def test_ema_update_moves_the_anchor_by_one_minus_decay():
    anchor = T(0.0, 10.0)
    assert ema_update(anchor, T(1.0, 0.0), 0.9) is anchor
    assert torch.allclose(anchor, T(0.1, 9.0))
    assert torch.equal(ema_update(T(3.0), T(5.0), 1.0), T(3.0))
    assert torch.equal(ema_update(T(3.0), T(5.0), 0.0), T(5.0))
    anchors = [T(0.0), T(2.0)]
    ema_update_all(anchors, [T(1.0), T(0.0)], 0.5)
    assert torch.equal(anchors[0], T(0.5)) and torch.equal(anchors[1], T(1.0))
    with pytest.raises(ValueError):
        ema_update(T(0.0), T(1.0), 1.5)
