import pytest

from posttrain.data.records import Message, Prompt
from posttrain.judge.grader import Grade
from posttrain.judge.scorer import FixedScores, GraderScorer, Score, WeightedScorer


class LengthGrader:
    def grade(self, prompt, response):
        return Grade(min(1.0, len(response[-1].content) / 10), "length")


class ConstantScorer:
    name = "const"

    def score(self, prompts, responses):
        return [Score(2.0) for _ in prompts]


def test_grader_scorer_and_weighted_combination():
    prompt = Prompt(messages=[Message(role="user", content="hi")])
    responses = [[Message(role="assistant", content="12345")], [Message(role="assistant", content="1234567890")]]
    graded = GraderScorer(LengthGrader()).score([prompt, prompt], responses)
    assert [s.value for s in graded] == [0.5, 1.0] and graded[0].reason == "length"
    combined = WeightedScorer([(GraderScorer(LengthGrader()), 1.0), (ConstantScorer(), 0.25)])
    values = [s.value for s in combined.score([prompt, prompt], responses)]
    assert values == pytest.approx([0.5 + 0.5, 1.0 + 0.5])


def test_fixed_scores_hand_back_their_values_in_order_and_check_the_count():
    prompt = Prompt(messages=[Message(role="user", content="hi")])
    responses = [[Message(role="assistant", content="a")], [Message(role="assistant", content="b")]]
    combined = WeightedScorer([(FixedScores([3.0, -1.0], name="rm0"), 1.0), (ConstantScorer(), 0.5)])
    assert [s.value for s in combined.score([prompt, prompt], responses)] == [4.0, 0.0]
    with pytest.raises(ValueError, match="rm0: 2 scores for 1 prompts"):
        FixedScores([3.0, -1.0], name="rm0").score([prompt], responses[:1])
