"""evaluate_prompts end to end with a scripted generator (no model): grading and aggregation."""
import pytest

from posttrain.data.records import Message, Prompt
from posttrain.evaluate.run import aggregate, evaluate_prompts
from posttrain.generate.base import Generation
from posttrain.judge.grader import Grade


class ScriptedGenerator:
    """Answers each prompt with the text mapped from its last token id."""

    def __init__(self, answers):
        self.answers = answers

    def generate(self, prompts, params):
        return [[Generation(token_ids=[], text=self.answers[p[-1]], finish_reason="eos")] for p in prompts]


class LastUserTokenizer:
    """Renders a chat to one 'token': the index of its user text in a fixed list."""

    def __init__(self, texts):
        self.texts = texts

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True, tokenize=True, return_dict=False):
        return [self.texts.index(messages[-1]["content"])]


class EqualsGrader:
    def grade(self, prompt, response):
        ok = response[-1].content == prompt.check["answer"]
        return Grade(1.0 if ok else 0.0, "ok" if ok else f"expected {prompt.check['answer']}")


def _prompt(text, family, answer, tags=()):
    return Prompt(messages=[Message(role="user", content=text)], family=family, check={"answer": answer},
                  tags=list(tags))


def test_evaluate_prompts_scores_per_family_and_tag():
    prompts = [_prompt("a", "math", "1"), _prompt("b", "math", "2"), _prompt("c", "safety", "no", ["unsafe"]),
               _prompt("d", "safety", "sure", ["safe_lookalike"])]
    texts = ["a", "b", "c", "d"]
    gen = ScriptedGenerator({0: "1", 1: "3", 2: "no", 3: "no"})
    from posttrain.generate.base import SamplingParams

    result = evaluate_prompts(gen, LastUserTokenizer(texts), prompts, EqualsGrader(), template="chatml",
                              params=SamplingParams())
    assert result.scores["math"].score == 0.5 and result.scores["math"].n == 2
    assert result.scores["safety"].score == 0.5
    assert result.scores["overall"].score == 0.5 and result.scores["overall"].n == 4
    assert result.tag_rates["safety/unsafe"].score == 1.0
    assert result.tag_rates["safety/safe_lookalike"].score == 0.0  # over-refusal is visible
    assert [f["reason"] for f in result.failures["math"]] == ["expected 2"]
    assert result.completions[1].responses[0].score == 0.0


def test_aggregate_interval_contains_mean():
    prompts = [_prompt(str(i), "f", "x") for i in range(10)]
    grades = [Grade(1.0 if i < 7 else 0.5, "") for i in range(10)]
    scores = aggregate(prompts, grades, lambda p: [p.family])
    s = scores["f"]
    assert s.score == pytest.approx(0.85) and s.pass_rate == pytest.approx(0.7)
    assert s.low < s.score < s.high
