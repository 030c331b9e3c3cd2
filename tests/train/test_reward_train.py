"""The reward-model loop on the engine: groups packed whole, pure plans, a toy preference learned and saved."""
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.data.records import Completion, Message, PreferencePair, Prompt, Response
from posttrain.data.tokenize import tokenize_conversation
from posttrain.losses.reward import UNKNOWN_LEVEL, RewardLossSettings
from posttrain.models.reward import RewardHead, load_reward_model, reward_model_from_causal_lm
from posttrain.train.config import TrainConfig
from posttrain.train.distributed import init_distributed
from posttrain.train.reward import (
    RewardGroup,
    RewardLoss,
    RewardPlan,
    collate_groups,
    completion_group,
    normalise_scores,
    pair_group,
    _response_mask,
    reward_loss_fn,
    run_reward_training,
)
from _train_fixtures import tiny_model, tiny_tokenizer, weights_hash

torch.set_num_threads(1)
NAN = float("nan")
GOOD, BAD = 5, 6  # the last token that makes a response good or bad in the toy task


def toy_groups(n: int, seed: int) -> list[RewardGroup]:
    """Pairs whose responses share a random prefix and end with GOOD (chosen) or BAD (rejected)."""
    rng = random.Random(seed)
    groups = []
    for i in range(n):
        prefix = [rng.randint(7, 63) for _ in range(rng.randint(3, 10))]
        groups.append(RewardGroup([prefix + [GOOD], prefix + [BAD]], [(0, 1, UNKNOWN_LEVEL)], [NAN, NAN],
                                  [[NAN], [NAN]], id=f"g{i}"))
    return groups


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from posttrain.models.loading import save_causal_lm

    return save_causal_lm(tiny_model(seed=0), tiny_tokenizer(), tmp_path_factory.mktemp("lm") / "model")


def test_plan_keeps_each_group_in_one_row_and_is_pure_in_seed_and_epoch():
    groups = toy_groups(30, 0) + [RewardGroup([[7] * 4, [8] * 5, [9] * 3], [(2, 0, 0), (2, 1, 0), (0, 1, 1)],
                                              [NAN] * 3, [[NAN]] * 3, id="ranked")]
    config = TrainConfig(micro_batch_tokens=40, accumulation=2, seed=3)
    plan = RewardPlan(groups, config, 1, init_distributed())
    rows = plan.rows(0)
    assert sorted(g.id for row in rows for g, _ in row) == sorted(g.id for g in groups)  # each group once
    assert all(sum(g.num_tokens for g, _ in row) <= 40 for row in rows)
    assert [[(g.id, o) for g, o in row] for row in rows] == [[(g.id, o) for g, o in row] for row in plan.rows(0)]
    assert [[g.id for g, _ in row] for row in rows] != [[g.id for g, _ in row] for row in plan.rows(1)]
    steps = plan.steps(0)
    assert len(steps) == math.ceil(len(rows) / 2) and all(len(step) <= 2 for step in steps)


def test_collate_reindexes_pairs_to_the_row():
    a = RewardGroup([[7, 8], [9]], [(0, 1, 2)], [0.5, NAN], [[NAN], [1.0]], id="a")
    b = RewardGroup([[10], [11, 12], [13]], [(2, 0, 0), (2, 1, 0), (0, 1, UNKNOWN_LEVEL)], [NAN] * 3,
                    [[NAN]] * 3, id="b")
    batch = collate_groups([a, b], [[1, 0], [2, 0, 1]], num_outputs=1)
    assert batch.packed.input_ids.tolist() == [[9, 7, 8, 13, 10, 11, 12]]
    assert batch.packed.seq_ends.tolist() == [0, 2, 3, 4, 6]
    # a: chosen (0) is at slot 1, rejected (1) at slot 0; b: responses 2, 0, 1 sit at slots 2, 3, 4.
    assert list(zip(batch.targets.better.tolist(), batch.targets.worse.tolist(), batch.targets.level.tolist())) == [
        (1, 0, 2), (2, 3, 0), (2, 4, 0), (3, 4, UNKNOWN_LEVEL)]
    assert batch.targets.score[1].item() == 0.5 and math.isnan(batch.targets.score[0].item())
    assert batch.targets.output_targets[0, 0].item() == 1.0


def test_normalise_scores():
    assert normalise_scores([0.0, 0.5, None, 1.0], "range", (0.0, 1.0))[:2] == [-1.0, 0.0]
    assert math.isnan(normalise_scores([None], "range", (0.0, 1.0))[0])
    assert normalise_scores([2.0, 4.0], "zscore", (0.0, 1.0)) == [-1.0, 1.0]
    assert normalise_scores([1.0, 10.0], "range", (1.0, 10.0)) == [-1.0, 1.0]
    with pytest.raises(ValueError, match="zscore"):
        normalise_scores([1.0], "minmax", (0.0, 1.0))


def test_pair_and_completion_groups_rank_their_responses():
    from posttrain.data.bpe import train_bytelevel_bpe

    tokenizer = train_bytelevel_bpe(["user assistant what is good bad better"] * 10, 280, "chatml")
    prompt = Prompt(messages=[Message(role="user", content="what is good")])

    def answer(text):
        return [Message(role="assistant", content=text)]

    pair = PreferencePair(prompt=prompt, chosen=answer("good"), rejected=answer("bad"), edited=answer("better"),
                          strength="slightly_better", chosen_attributes={"correctness": 3.0})
    head = RewardHead(("helpfulness", "correctness"), (0.5, 0.5))
    group = pair_group(pair, tokenizer, "chatml", head, (0.5, -1.0), edited_strength="better")
    # responses: chosen 0, rejected 1, edited 2; levels: chosen > rejected slightly (2), edited > chosen better (1),
    # edited > rejected the stronger of the two (1).
    assert sorted(group.pairs) == [(0, 1, 2), (2, 0, 1), (2, 1, 1)]
    assert group.scores[:2] == [0.5, -1.0] and math.isnan(group.scores[2])
    assert math.isnan(group.output_targets[0][0]) and group.output_targets[0][1] == 3.0
    assert len(pair_group(pair, tokenizer, "chatml", head, (NAN, NAN), None, use_edited=False).sequences) == 2
    assert group.lm_masks == []  # built without masks unless the LM regulariser asks for them
    # the LM regulariser trains on the response that loses no pair (edited), on its own assistant tokens
    marked = pair_group(pair, tokenizer, "chatml", head, (0.5, -1.0), edited_strength="better", lm_masks=True)
    full = tokenize_conversation(tokenizer, prompt.messages + answer("better"), None, "chatml").assistant_mask
    assert marked.lm_masks == [[], [], full] and any(full)
    plain = pair_group(pair, tokenizer, "chatml", head, (NAN, NAN), None, use_edited=False, lm_masks=True)
    assert any(plain.lm_masks[0]) and plain.lm_masks[1] == []  # without edited: chosen

    completion = Completion(prompt=prompt, responses=[
        Response(index=0, messages=answer("good"), score=1.0), Response(index=1, messages=answer("bad"), score=0.0),
        Response(index=2, messages=answer("better"), score=1.0), Response(index=3, messages=answer("bad"))])
    group = completion_group(completion, tokenizer, "chatml", RewardHead(), [1.0, -1.0, 1.0, NAN])
    assert sorted(group.pairs) == [(0, 1, UNKNOWN_LEVEL), (2, 1, UNKNOWN_LEVEL)]  # ties and unscored: no pair
    marked = completion_group(completion, tokenizer, "chatml", RewardHead(), [1.0, -1.0, 1.0, NAN], lm_masks=True)
    assert [any(m) for m in marked.lm_masks] == [True, False, True, False]  # the top-scored responses


def test_response_mask_keeps_the_responses_own_assistant_turns():
    # a prompt with one assistant turn (positions 1-2), then a response of two assistant turns (4, 6-7)
    mask = [False, True, True, False, True, False, True, True]
    assert _response_mask(mask, 2) == [False, False, False, False, True, False, True, True]
    assert _response_mask(mask, 1) == [False] * 6 + [True, True]
    assert _response_mask(mask, 3) == mask


def test_lm_coef_adds_the_causal_lms_nll_on_preferred_tokens(tmp_path):
    """The penalty equals coef x pairs x the mean NLL the saved causal LM gives the masked tokens."""
    from transformers import AutoModelForCausalLM

    from posttrain.data.packing import collate_packed
    from posttrain.models.loading import save_causal_lm

    path = save_causal_lm(tiny_model(seed=0, tie=True), tiny_tokenizer(), tmp_path / "lm")
    model, _ = reward_model_from_causal_lm(path, RewardHead(), seed=0)
    groups = [dataclasses.replace(g, lm_masks=[[False] * 2 + [True] * (len(g.sequences[0]) - 2),
                                                [False] * len(g.sequences[1])]) for g in toy_groups(3, 0)]
    batch = collate_groups(groups, [[0, 1]] * 3, num_outputs=1)
    with torch.no_grad():
        plain = reward_loss_fn(RewardLoss(), RewardHead())(model, batch)
        regularised = reward_loss_fn(RewardLoss(settings=RewardLossSettings(lm_coef=0.5)), RewardHead())(model, batch)
        causal = AutoModelForCausalLM.from_pretrained(str(path))
        nll = []
        for g in groups:  # the chosen sequence alone: position t predicts token t + 1
            ids = torch.tensor([g.sequences[0]])
            logp = torch.log_softmax(causal(input_ids=ids).logits[0, :-1].float(), dim=-1)
            targets = ids[0, 1:]
            wanted = torch.tensor(g.lm_masks[0][1:])
            nll += (-logp[torch.arange(len(targets)), targets])[wanted].tolist()
    expected = 0.5 * 3 * sum(nll) / len(nll)
    assert (regularised.loss_sum - plain.loss_sum).item() == pytest.approx(expected, rel=1e-4)
    assert regularised.metrics["num_lm_tokens"].item() == len(nll)
    untied = reward_model_from_causal_lm(save_causal_lm(tiny_model(seed=0), tiny_tokenizer(), tmp_path / "u"),
                                         RewardHead(), seed=0)[0]
    lm_loss = RewardLoss(settings=RewardLossSettings(lm_coef=0.5))
    with pytest.raises(ValueError, match="tie"):
        reward_loss_fn(lm_loss, RewardHead())(untied, batch)
    config = TrainConfig(micro_batch_tokens=64, epochs=1)
    with pytest.raises(ValueError, match="tie"):  # refused before training
        run_reward_training(untied, tiny_tokenizer(), groups, config, lm_loss, RewardHead(), tmp_path / "a")
    with pytest.raises(ValueError, match="lm_masks"):  # groups built without masks would train no LM term
        run_reward_training(model, tiny_tokenizer(), toy_groups(3, 0), config, lm_loss, RewardHead(), tmp_path / "b")


def test_training_learns_a_toy_preference_and_saves_an_hf_reward_model(tmp_path, backbone):
    model, tokenizer = reward_model_from_causal_lm(backbone, RewardHead(), seed=0)
    config = TrainConfig(lr=3e-3, micro_batch_tokens=64, accumulation=2, epochs=3, seed=0, warmup_steps=2)
    rows = []
    summary = run_reward_training(model, tokenizer, toy_groups(64, 0), config,
                                  RewardLoss("bradley_terry", RewardLossSettings()), RewardHead(), tmp_path,
                                  log_fn=rows.append)
    assert summary["steps"] == len(rows) > 10 and summary["pairs"] == 64
    assert rows[-1]["accuracy"] == 1.0 and summary["final_loss"] < 0.3 < rows[0]["loss"]
    saved, _, head = load_reward_model(tmp_path / "model")
    assert head == RewardHead()
    assert json.loads((tmp_path / "model" / "config.json").read_text())["pad_token_id"] == 1
    held_out = toy_groups(16, 99)
    batch = collate_groups(held_out, [[0, 1]] * 16, num_outputs=1)
    from posttrain.models.reward import packed_head_outputs

    with torch.no_grad():
        rewards = packed_head_outputs(saved, batch.packed)[:, 0]
    assert bool((rewards[batch.targets.better] > rewards[batch.targets.worse]).all())


class Cut(Exception):
    pass


def test_cut_run_resumes_to_the_same_weights(tmp_path, backbone):
    config = TrainConfig(lr=3e-3, micro_batch_tokens=64, epochs=2, seed=1, checkpoint_every=2)
    loss = RewardLoss("soft_label", RewardLossSettings())
    groups = toy_groups(12, 1)

    def train(out, log_fn=None):
        model, tokenizer = reward_model_from_causal_lm(backbone, RewardHead(), seed=0)
        return run_reward_training(model, tokenizer, groups, config, loss, RewardHead(), out, log_fn=log_fn)

    uncut = train(tmp_path / "uncut")

    def cut_at_step_5(row):
        if row["step"] == 5:
            raise Cut  # logged before step 5's checkpoint: the resume starts from step 4

    with pytest.raises(Cut):
        train(tmp_path / "cut", cut_at_step_5)
    resumed = train(tmp_path / "cut")
    assert resumed["losses"] == uncut["losses"][4:]
    a, _, _ = load_reward_model(tmp_path / "uncut" / "model")
    b, _, _ = load_reward_model(tmp_path / "cut" / "model")
    assert weights_hash(a) == weights_hash(b)


DDP_CONFIG = {"lr": 3e-3, "micro_batch_tokens": 32, "epochs": 1, "seed": 2}


def _train_toy_rm(backbone, out, **overrides):
    model, tokenizer = reward_model_from_causal_lm(backbone, RewardHead(), seed=0)
    config = TrainConfig(**DDP_CONFIG, **overrides)
    return run_reward_training(model, tokenizer, toy_groups(24, 2), config, RewardLoss(), RewardHead(), out)


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path, backbone):
    _train_toy_rm(backbone, tmp_path / "one", accumulation=2)
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc-per-node", "2", __file__, str(backbone), str(tmp_path / "two")]
    run = subprocess.run(command, capture_output=True, text=True, timeout=400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    one, _, _ = load_reward_model(tmp_path / "one" / "model")
    two, _, _ = load_reward_model(tmp_path / "two" / "model")
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


if __name__ == "__main__":  # the torchrun worker of test_ddp_two_processes_match_one
    torch.set_num_threads(1)
    _train_toy_rm(Path(sys.argv[1]), Path(sys.argv[2]), accumulation=1, parallel="ddp")
