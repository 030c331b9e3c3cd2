"""Whole-world properties: references score 1, corruptions fail, splits disjoint, determinism, SFT data."""
import random

import pytest

from posttrain.data.records import Conversation, Message, Prompt
from posttrain.judge.grader import Grader
from posttrain.tinyworld import FAMILIES, TinyWorldGrader, eval_prompts, grade, sft_conversations

EXPECTED = {"math", "instruction_following", "tool_use", "safety", "multi_turn", "steerability"}


def _text(prompt: Prompt) -> str:
    return "\n".join(m.content or "" for m in prompt.messages)


def test_all_six_families_are_registered():
    assert set(FAMILIES) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("split", ["train", "eval"])
def test_references_score_one_and_corruptions_do_not(name, split):
    family = FAMILIES[name]
    prompts = family.generate_prompts(split, 200, seed=7)
    assert len(prompts) == 200 and all(p.family == name and p.check for p in prompts)
    rng = random.Random(0)
    for prompt in prompts:
        reference = family.reference_solution(prompt)
        result = grade(prompt, reference)
        assert result.score == 1.0, (_text(prompt), reference, result.reason)
        Conversation(messages=prompt.messages + reference, tools=prompt.tools)  # a valid chat
        assert grade(prompt, family.corrupt(prompt, reference, rng)).score < 1.0, _text(prompt)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_splits_are_disjoint_across_seeds(name):
    family = FAMILIES[name]
    train = [p for seed in (0, 1, 2) for p in family.generate_prompts("train", 200, seed)]
    seen = {p.id for p in train} | {_text(p) for p in train}
    for seed in (0, 1, 2):
        for prompt in family.generate_prompts("eval", 200, seed):
            assert prompt.id not in seen and _text(prompt) not in seen, _text(prompt)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_generators_are_deterministic_per_seed(name):
    family = FAMILIES[name]
    first = [p.id for p in family.generate_prompts("train", 30, seed=5)]
    assert first == [p.id for p in family.generate_prompts("train", 30, seed=5)]
    assert first != [p.id for p in family.generate_prompts("train", 30, seed=6)]
    assert len(set(first)) == 30  # distinct within one call


def test_unknown_split_and_family_are_refused():
    with pytest.raises(ValueError, match="split"):
        FAMILIES["math"].generate_prompts("test", 1, 0)
    stray = Prompt(messages=[Message(role="user", content="hi")], family="poetry")
    with pytest.raises(ValueError, match="unknown tiny-world family 'poetry'"):
        grade(stray, [Message(role="assistant", content="hello")])


def test_world_grader_satisfies_the_protocol():
    grader = TinyWorldGrader()
    assert isinstance(grader, Grader)
    prompt = FAMILIES["math"].generate_prompts("eval", 1, 0)[0]
    assert grader.grade(prompt, FAMILIES["math"].reference_solution(prompt)).passed


def test_sft_conversations_mark_exactly_the_noisy_share():
    conversations = sft_conversations(20, seed=3, noise=0.25)
    assert len(conversations) == 20 * len(EXPECTED)
    for name in EXPECTED:
        rows = [c for c in conversations if c.meta.family == name]
        assert len(rows) == 20 and sum(c.meta.corrupted for c in rows) == 5
    clean = sft_conversations(20, seed=3)
    assert not any(c.meta.corrupted for c in clean)
    assert [c.id for c in clean] == [c.id for c in sft_conversations(20, seed=3)]
    tool_rows = [c for c in clean if c.meta.family == "tool_use" and c.tools]
    assert tool_rows and any(m.role == "tool" for c in tool_rows for m in c.messages)
    with pytest.raises(ValueError):
        sft_conversations(2, seed=0, noise=1.5)


def test_eval_prompts_cover_every_family():
    prompts = eval_prompts(10, seed=0)
    assert len(prompts) == 60
    assert {p.family for p in prompts} == EXPECTED


def test_reference_conversations_answer_their_prompts_and_pass(tmp_path):
    from posttrain.cli import main
    from posttrain.curate.pairs import prompt_key, reference_answers
    from posttrain.data.io import iter_jsonl

    assert main(["tinyworld-data", "--set", "sft_per_family=2", "--set", "eval_per_family=2",
                 "--set", "train_prompts_per_family=5", "--out", str(tmp_path)]) == 0
    prompts = [Prompt.model_validate(row) for _, row in iter_jsonl(tmp_path / "prompts.jsonl")]
    references = [Conversation.model_validate(row) for _, row in iter_jsonl(tmp_path / "references.jsonl")]
    answers = reference_answers(references)
    assert len(answers) == len(prompts)
    for prompt in prompts:  # matched back to its prompt, and the graders pass it
        assert grade(prompt, answers[prompt_key(prompt.messages)]).score == 1.0, _text(prompt)


def test_train_prompts_per_family_takes_a_count_per_family(tmp_path):
    from collections import Counter

    from posttrain.cli import main
    from posttrain.data.io import iter_jsonl
    from posttrain.stages.tinyworld_data import TinyWorldDataConfig

    assert main(["tinyworld-data", "--set", "sft_per_family=2", "--set", "eval_per_family=2",
                 "--set", "train_prompts_per_family={math: 3, safety: 2}", "--out", str(tmp_path)]) == 0
    families = Counter(row["family"] for _, row in iter_jsonl(tmp_path / "prompts.jsonl"))
    assert families == {"math": 3, "safety": 2}  # families left out get none
    for bad, reason in (({"maths": 3}, "unknown families"), ({"math": -1}, ">= 0"), (-2, ">= 0")):
        with pytest.raises(ValueError, match=reason):
            TinyWorldDataConfig(train_prompts_per_family=bad)
