"""Data mixture sampling and NEFTune noise."""
import math
from collections import Counter

import pytest
import torch

from _train_fixtures import tiny_model
from posttrain.train.mixture import sample_mixture, sample_source
from posttrain.train.neftune import add_neftune, neftune_noise
from posttrain.train.sft import SFTConfig, SFTData, SFTPlan
from posttrain.train.distributed import DistContext


def test_mixture_weights_sample_in_proportion():
    sizes = {"math": 100, "chat": 40, "code": 10, "off": 7}
    weights = {"math": 0.3, "chat": 2.5, "code": 1.0, "off": 0.0}
    order = sample_mixture(sizes, weights, seed=1, epoch=0)
    counts = Counter(source for source, _ in order)
    assert counts == {"math": 30, "chat": 100, "code": 10}
    chat = Counter(index for source, index in order if source == "chat")
    assert all(chat[i] in (2, 3) for i in range(40)) and sum(chat[i] == 3 for i in range(40)) == 20
    assert len({index for source, index in order if source == "math"}) == 30  # without replacement


def test_mixture_is_a_pure_function_of_seed_and_epoch():
    sizes, weights = {"a": 50, "b": 30}, {"a": 0.5}
    assert sample_mixture(sizes, weights, 3, 1) == sample_mixture(sizes, weights, 3, 1)
    assert sample_mixture(sizes, weights, 3, 1) != sample_mixture(sizes, weights, 3, 2)  # resampled per epoch
    assert sample_mixture(sizes, weights, 3, 1) != sample_mixture(sizes, weights, 4, 1)
    with pytest.raises(ValueError, match="unknown sources"):
        sample_mixture(sizes, {"c": 1.0}, 0, 0)


def test_fractional_remainder_spreads_over_the_source():
    rng_counts = Counter()
    for epoch in range(200):
        rng_counts.update(sample_source(10, 0.5, __import__("numpy").random.default_rng(epoch)).tolist())
    assert sum(rng_counts.values()) == 1000 and min(rng_counts.values()) > 60  # each ~100 of 1000


def test_plan_pads_steps_so_every_rank_gets_the_same_count():
    examples = [{"input_ids": [5] * 10, "loss_mask": [1] * 10} for _ in range(5)]
    config = SFTConfig(micro_batch_tokens=10, accumulation=2)
    data = SFTData.filter({"s": examples + [{"input_ids": [5] * 11, "loss_mask": [1] * 11}]}, 10)
    assert data.dropped == {"too_long": 1, "no_loss_tokens": 0}
    rank0 = SFTPlan(data, config, DistContext(rank=0, world_size=2)).steps(0)
    rank1 = SFTPlan(data, config, DistContext(rank=1, world_size=2)).steps(0)
    assert len(rank0) == len(rank1) == 2  # 5 rows, 4 per global step -> steps of 4 and 1 (+1 empty pad)
    assert [len(s) for s in rank0] == [2, 1] and [len(s) for s in rank1] == [2, 1]
    assert rank1[1][0].num_loss_tokens == 0  # the pad row trains nothing


def test_neftune_noise_only_in_training_and_bounded():
    model = tiny_model(seed=1)
    ids = torch.randint(3, 60, (1, 12))
    clean = model.get_input_embeddings()(ids).detach()
    handle = add_neftune(model, alpha=5.0)
    embedding = model.get_input_embeddings()
    model.train()
    noisy_a, noisy_b = embedding(ids).detach(), embedding(ids).detach()
    bound = 5.0 / math.sqrt(12 * 32)
    assert not torch.equal(noisy_a, clean) and not torch.equal(noisy_a, noisy_b)
    assert (noisy_a - clean).abs().max() <= bound + 1e-7
    assert (noisy_a - clean).abs().max() > 0.5 * bound  # uniform over the full range
    model.eval()
    assert torch.equal(embedding(ids), clean)
    handle.remove()
    model.train()
    assert torch.equal(embedding(ids), clean)


def test_neftune_noise_scale():
    noise = neftune_noise(torch.zeros(2, 100, 16), alpha=8.0)
    scale = 8.0 / math.sqrt(100 * 16)
    assert noise.abs().max() <= scale and noise.std() == pytest.approx(scale / math.sqrt(3), rel=0.05)
