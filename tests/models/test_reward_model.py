"""Reward model mechanics: HF-format save/load, transformers' scores equal ours, packed pooling, the scorer."""
import json
from pathlib import Path

import pytest
import torch

from posttrain.data.packing import collate_packed
from posttrain.data.records import Message, Prompt
from posttrain.data.tokenize import tokenize_conversation
from posttrain.models.reward import (
    HELPSTEER2_ATTRIBUTES,
    HELPSTEER2_WEIGHTS,
    RewardHead,
    load_reward_model,
    packed_head_outputs,
    reward_model_from_causal_lm,
    save_reward_model,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def chat_model(make_chat_model) -> Path:
    return make_chat_model(max_positions=256)  # the conftest model with a shorter position range


def chats() -> list[list[Message]]:
    texts = [("what is the sum", "the answer has coins"), ("how many coins", "refuse"),
             ("answer more", "how many more coins has the user")]
    return [[Message(role="user", content=q), Message(role="assistant", content=a)] for q, a in texts]


def token_ids(tokenizer, conversations) -> list[list[int]]:
    return [tokenize_conversation(tokenizer, c).input_ids for c in conversations]


def packed_outputs(model, ids) -> torch.Tensor:
    batch = collate_packed([{"input_ids": x, "loss_mask": [False] * len(x)} for x in ids])
    with torch.no_grad():
        return packed_head_outputs(model, batch)


@pytest.mark.parametrize("head", [RewardHead(), RewardHead(HELPSTEER2_ATTRIBUTES, HELPSTEER2_WEIGHTS)],
                         ids=["scalar", "helpsteer2"])
def test_transformers_scores_equal_ours(tmp_path, chat_model, head):
    from transformers import AutoModelForSequenceClassification

    model, tokenizer = reward_model_from_causal_lm(chat_model, head, seed=3)
    out = save_reward_model(model, tokenizer, tmp_path / "rm")
    config = json.loads((out / "config.json").read_text())
    eos = config["eos_token_id"]
    assert config["pad_token_id"] not in (eos if isinstance(eos, list) else [eos])
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["posttrain_reward_head"] == {"outputs": list(head.outputs), "weights": list(head.weights)}
    assert list(config["id2label"].values()) == list(head.outputs)

    hf = AutoModelForSequenceClassification.from_pretrained(out, local_files_only=True).eval()
    ids = token_ids(tokenizer, chats())
    assert all(hf.config.pad_token_id not in x for x in ids)
    width = max(len(x) for x in ids)
    input_ids = torch.tensor([x + [hf.config.pad_token_id] * (width - len(x)) for x in ids])  # right padding
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        theirs = hf(input_ids=input_ids, attention_mask=mask).logits  # (B, K)
    ours = packed_outputs(model, ids)
    assert theirs.shape == (3, head.size)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)

    loaded, _, loaded_head = load_reward_model(out)
    assert loaded_head == head
    torch.testing.assert_close(packed_outputs(loaded, ids), ours, rtol=1e-6, atol=1e-6)


def test_packed_rows_do_not_leak_between_sequences(chat_model):
    model, tokenizer = reward_model_from_causal_lm(chat_model, RewardHead(), seed=0)
    ids = token_ids(tokenizer, chats())
    together = packed_outputs(model, ids)
    alone = torch.cat([packed_outputs(model, [x]) for x in ids])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_head_init_is_a_function_of_the_seed_and_a_reward_model_keeps_its_head(tmp_path, chat_model):
    a, tokenizer = reward_model_from_causal_lm(chat_model, RewardHead(), seed=1)
    b, _ = reward_model_from_causal_lm(chat_model, RewardHead(), seed=1)
    c, _ = reward_model_from_causal_lm(chat_model, RewardHead(), seed=2)
    assert torch.equal(a.score.weight, b.score.weight) and not torch.equal(a.score.weight, c.score.weight)
    with torch.no_grad():
        a.score.weight.fill_(0.5)
    saved = save_reward_model(a, tokenizer, tmp_path / "rm")
    again, _ = reward_model_from_causal_lm(saved, RewardHead(), seed=9)
    assert torch.equal(again.score.weight, a.score.weight)


def test_head_from_a_bare_config():
    from types import SimpleNamespace

    assert RewardHead.from_config(SimpleNamespace(num_labels=1)) == RewardHead()
    assert RewardHead.from_config(SimpleNamespace(num_labels=2)).outputs == ("output_0", "output_1")
    with pytest.raises(ValueError, match="one weight per output"):
        RewardHead(("a", "b"), (1.0,))


def test_reward_model_scorer_batches_and_weights(tmp_path, chat_model):
    from posttrain.judge.reward_scorer import RewardModelScorer
    from posttrain.judge.scorer import Scorer

    model, tokenizer = reward_model_from_causal_lm(chat_model, RewardHead(HELPSTEER2_ATTRIBUTES, HELPSTEER2_WEIGHTS),
                                                   seed=0)
    path = save_reward_model(model, tokenizer, tmp_path / "rm")
    prompts = [Prompt(messages=c[:1]) for c in chats()]
    responses = [c[1:] for c in chats()]
    scorer = RewardModelScorer(path, batch_size=2, device="cpu")  # compared with the float32 CPU model below
    assert isinstance(scorer, Scorer) and scorer.name == "reward_model"
    scores = scorer.score(prompts, responses)
    expected = packed_outputs(model, token_ids(tokenizer, chats())) @ torch.tensor(HELPSTEER2_WEIGHTS)
    assert [s.value for s in scores] == pytest.approx(expected.tolist(), abs=1e-5)
    assert scores[0].reason.startswith("helpfulness=")
    only_correct = {name: 0.0 for name in HELPSTEER2_ATTRIBUTES} | {"correctness": 1.0}
    in_memory = RewardModelScorer(model, tokenizer, attribute_weights=only_correct, name="rm")
    outputs = packed_outputs(model, token_ids(tokenizer, chats()))
    assert [s.value for s in in_memory.score(prompts, responses)] == pytest.approx(outputs[:, 1].tolist(), abs=1e-5)
    assert scorer.score_conversations([(c, None) for c in chats()]) == pytest.approx([s.value for s in scores], abs=1e-6)


def test_normalized_scorer_uses_the_recorded_scale(tmp_path, chat_model):
    from posttrain.judge.reward_scorer import RewardModelScorer
    from posttrain.models.reward import SCALE_CONFIG_KEY, record_reward_scale, reward_scale

    model, tokenizer = reward_model_from_causal_lm(chat_model, RewardHead(), seed=0)
    path = save_reward_model(model, tokenizer, tmp_path / "rm")
    prompts = [Prompt(messages=c[:1]) for c in chats()]
    responses = [c[1:] for c in chats()]
    with pytest.raises(ValueError, match=SCALE_CONFIG_KEY):
        RewardModelScorer(path, normalize=True)  # trained before scales were recorded: say so, do not guess
    scale = reward_scale(torch.tensor([1.0, 2.0, 3.0, 6.0]))
    assert scale == {"mean": 3.0, "std": pytest.approx(2.160247, abs=1e-6), "n": 4}  # sample std of 1, 2, 3, 6
    record_reward_scale(path, scale)
    raw = [s.value for s in RewardModelScorer(path).score(prompts, responses)]
    normalized = [s.value for s in RewardModelScorer(path, normalize=True).score(prompts, responses)]
    assert normalized == pytest.approx([(r - 3.0) / scale["std"] for r in raw], abs=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        reward_scale(torch.tensor([1.0]))
