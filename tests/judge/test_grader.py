"""The grader contract: Grade bounds, final answers, fraction-of-checks scoring."""
import pytest

from posttrain.data.records import FunctionCall, Message, Prompt, ToolCall
from posttrain.judge.grader import Grade, Grader, final_answer, grade_checks


def test_grade_score_must_be_in_unit_interval():
    assert Grade(0.0, "x").score == 0.0
    assert Grade(1.0, "x").passed
    assert not Grade(0.99, "x").passed
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="in \\[0, 1\\]"):
            Grade(bad, "x")


def test_final_answer_is_last_assistant_text_after_tool_round_trip():
    call = ToolCall(id="c1", function=FunctionCall(name="calculator", arguments='{"expression": "2+3"}'))
    response = [Message(role="assistant", tool_calls=[call]),
                Message(role="tool", tool_call_id="c1", content="5"),
                Message(role="assistant", content="The answer is 5.")]
    assert final_answer(response) == "The answer is 5."
    assert final_answer(response[:2]) == ""  # the call carries no text, the tool message is not the model's
    assert final_answer([]) == ""


def test_grade_checks_is_fraction_and_lists_every_check():
    grade = grade_checks([("upper", True), ("words=5", False), ("quotes", True), ("json", False)])
    assert grade.score == 0.5
    assert grade.reason == "upper: ok; words=5: FAILED; quotes: ok; json: FAILED"
    with pytest.raises(ValueError):
        grade_checks([])


def test_grader_protocol_is_structural():
    class Always:
        def grade(self, prompt: Prompt, response: list[Message]) -> Grade:
            return Grade(1.0, "always")

    assert isinstance(Always(), Grader)
    assert not isinstance(object(), Grader)
