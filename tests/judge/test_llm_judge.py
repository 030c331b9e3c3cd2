"""LLM-as-judge with a scripted ChatBackend: both orders must agree, ratings parse, the factory builds scorers.

The same judge over the `openai` backend and its in-test HTTP server is tested with that backend.
"""
import math
import re

import pytest

from posttrain.data.records import Message, Prompt
from posttrain.generate.base import ChatBackend, ChatSample
from posttrain.judge.factory import ScorerSpec, build_scorer
from posttrain.judge.grader import Grade
from posttrain.judge.llm_judge import (JudgeScorer, PairwiseJudge, agreement_rate, combine_orders, parse_pairwise,
                                       parse_rating, render_transcript)
from posttrain.judge.scorer import WeightedScorer

PROMPT = Prompt(messages=[Message(role="user", content="What is 2 + 3?")], family="math")
GOOD = [Message(role="assistant", content="Answer: 5")]
BAD = [Message(role="assistant", content="Answer: 7")]
_ANSWER = re.compile(r"\[The Start of Assistant A's Answer\]\nassistant: (.*?)\n", re.S)


class ScriptedJudge:
    """A ChatBackend whose reply is `rule(request text)`; records every request and seed."""

    name = "scripted"

    def __init__(self, rule):
        self.rule = rule
        self.requests: list[str] = []
        self.seeds: list[int] = []

    def chat(self, conversations, params, seeds=None):
        out = []
        for (messages, _), seed in zip(conversations, seeds or [None] * len(conversations)):
            text = messages[-1].content
            self.requests.append(text)
            self.seeds.append(seed)
            out.append([ChatSample(messages=[Message(role="assistant", content=self.rule(text))],
                                   finish_reason="eos", model=self.name)] * params.n)
        return out


def prefers_five(text: str) -> str:
    """A consistent judge: the answer saying 5 wins, wherever it is shown."""
    return "A is right. [[A]]" if _ANSWER.search(text).group(1) == "Answer: 5" else "B is right. [[B]]"


def test_scripted_judge_is_a_chat_backend():
    assert isinstance(ScriptedJudge(prefers_five), ChatBackend)


def test_consistent_judge_agrees_in_both_orders():
    backend = ScriptedJudge(prefers_five)
    verdicts = PairwiseJudge(backend).judge([PROMPT, PROMPT], [GOOD, BAD], [BAD, GOOD])
    assert [(v.label, v.winner) for v in verdicts] == [("agree", "first"), ("agree", "second")]
    assert verdicts[0].reasons == ("A is right. [[A]]", "B is right. [[B]]")
    # Each pair is asked twice, the second time with the answers swapped.
    assert len(backend.requests) == 4
    assert backend.requests[0].index("Answer: 5") < backend.requests[0].index("Answer: 7")
    assert backend.requests[1].index("Answer: 7") < backend.requests[1].index("Answer: 5")
    assert "user: What is 2 + 3?" in backend.requests[0]
    assert agreement_rate(verdicts) == 1.0


def test_position_biased_judge_never_agrees():
    verdicts = PairwiseJudge(ScriptedJudge(lambda text: "[[A]]")).judge([PROMPT], [GOOD], [BAD])
    assert verdicts[0].label == "disagree" and verdicts[0].winner is None and not verdicts[0].agreed
    assert agreement_rate(verdicts) == 0.0


def test_tie_and_unparsed_verdicts():
    assert PairwiseJudge(ScriptedJudge(lambda t: "[[C]]")).judge([PROMPT], [GOOD], [BAD])[0].label == "tie"
    assert PairwiseJudge(ScriptedJudge(lambda t: "no idea")).judge([PROMPT], [GOOD], [BAD])[0].label == "unparsed"
    assert combine_orders("A", "tie", ("", "")).label == "disagree"
    assert combine_orders("B", "A", ("", "")).winner == "second"


def test_seeds_follow_the_prompt_not_the_batch():
    alone, batched = ScriptedJudge(prefers_five), ScriptedJudge(prefers_five)
    other = Prompt(messages=[Message(role="user", content="What is 1 + 1?")])
    PairwiseJudge(alone, seed=3).judge([PROMPT], [GOOD], [BAD])
    PairwiseJudge(batched, seed=3).judge([other, PROMPT], [GOOD, GOOD], [BAD, BAD])
    assert alone.seeds == batched.seeds[2:]
    assert len(set(alone.seeds)) == 2


def test_parsers():
    assert parse_pairwise("first [[B]] then finally [[A]]") == "A"
    assert parse_pairwise("[[C]]") == "tie" and parse_pairwise("[A]") is None
    assert parse_rating("Rating: [[7]]") == 7.0 and parse_rating("[[8.5]]") == 8.5
    assert parse_rating("Rating: [[11]]") is None and parse_rating("seven") is None


def test_single_answer_grading_is_a_scorer():
    backend = ScriptedJudge(lambda text: "Correct. Rating: [[9]]" if "Answer: 5" in text else "Rating: [[2]]")
    scorer = JudgeScorer(backend)
    scores = scorer.score([PROMPT, PROMPT], [GOOD, BAD])
    assert [s.value for s in scores] == [0.9, 0.2]
    assert scores[0].reason.startswith("rating 9/10")
    silent = JudgeScorer(ScriptedJudge(lambda text: "hmm")).score([PROMPT], [GOOD])[0]
    assert math.isnan(silent.value) and "no rating" in silent.reason


def test_transcript_spells_out_tool_calls():
    from posttrain.data.records import FunctionCall, ToolCall

    call = ToolCall(id="call_0", function=FunctionCall(name="calc", arguments='{"expression": "2+3"}'))
    text = render_transcript([Message(role="assistant", tool_calls=[call]),
                              Message(role="tool", content="5", tool_call_id="call_0")])
    assert text == 'assistant: [calls calc({"expression": "2+3"})]\ntool: 5'


class HalfGrader:
    def grade(self, prompt, response):
        return Grade(0.5, "half")


def test_factory_builds_graders_and_weighted_combinations():
    single = build_scorer({"type": "grader"}, grader=HalfGrader())
    assert single.name == "grader" and single.score([PROMPT], [GOOD])[0].value == 0.5
    weighted = build_scorer([{"type": "grader", "weight": 2.0}, {"type": "grader", "name": "g2", "weight": -1.0}],
                            grader=HalfGrader())
    assert isinstance(weighted, WeightedScorer)
    assert weighted.score([PROMPT], [GOOD])[0].value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no grader"):
        build_scorer(ScorerSpec())
    with pytest.raises(ValueError, match="needs `path`"):
        build_scorer({"type": "reward_model"})
    with pytest.raises(ValueError):
        build_scorer({"type": "grader", "typo": 1}, grader=HalfGrader())
