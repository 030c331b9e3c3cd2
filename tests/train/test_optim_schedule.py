import math

import pytest
import torch
from pydantic import ValidationError

from _train_fixtures import tiny_model
from posttrain.train.config import TrainConfig
from posttrain.train.optim import build_optimizer, build_scheduler, decay_and_no_decay, lr_multiplier


def test_decay_only_on_linear_weights():
    model = tiny_model()
    decayed, undecayed = decay_and_no_decay(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed_names = {names[id(p)] for p in decayed}
    undecayed_names = {names[id(p)] for p in undecayed}
    assert "model.embed_tokens.weight" in undecayed_names
    assert "model.norm.weight" in undecayed_names
    assert "lm_head.weight" in decayed_names
    assert all(name.endswith("proj.weight") or name == "lm_head.weight" for name in decayed_names)
    assert all("norm" in name or "embed" in name for name in undecayed_names)
    optimizer = build_optimizer(model, TrainConfig(weight_decay=0.1))
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]


def test_tied_head_is_undecayed_and_counted_once():
    model = tiny_model(tie=True)
    decayed, undecayed = decay_and_no_decay(model)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(p is not model.lm_head.weight for p in decayed)
    assert sum(p is model.lm_head.weight for p in undecayed) == 1


def test_schedules_by_hand():
    cosine = lr_multiplier("cosine", warmup=2, total=6)
    # warmup: 1/2, 2/2; then cos over 4 decay steps: progress 0, 1/4, 1/2, 3/4
    expected = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]
    assert [cosine(s) for s in range(6)] == pytest.approx(expected)
    linear = lr_multiplier("linear", warmup=0, total=4, min_ratio=0.2)
    assert [linear(s) for s in range(4)] == pytest.approx([1.0, 0.8, 0.6, 0.4])
    assert lr_multiplier("constant", warmup=1, total=5)(3) == 1.0


def test_scheduler_drives_optimizer_lr():
    model = torch.nn.Linear(2, 2)
    config = TrainConfig(lr=1.0, warmup_ratio=0.5, schedule="linear")
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert seen == pytest.approx([0.5, 1.0, 1.0, 0.5])


def test_config_rejects_typos_and_bad_values():
    with pytest.raises(ValidationError, match="lrr"):
        TrainConfig(lrr=1e-3)
    with pytest.raises(ValidationError):
        TrainConfig(betas=(0.9, 1.0))
    assert TrainConfig(warmup_ratio=0.1).warmup_for(100) == 10
    assert TrainConfig(warmup_steps=3, warmup_ratio=0.5).warmup_for(100) == 3
