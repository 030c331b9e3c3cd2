"""Tool use: the call round trip, every way a call can fail, and needless or forbidden calls."""
import json

import pytest

from posttrain.data.records import FunctionCall, Message, ToolCall
from posttrain.tinyworld.families import tool_use
from posttrain.tinyworld.family import answer, make_prompt
from posttrain.tinyworld.tools import TOOLS

CALC = make_prompt("tool_use", [("system", tool_use.SYSTEM_TOOLS), ("user", "What is 12 * 7?")], tags=[],
                   difficulty=0.4, tools=TOOLS, check={"mode": "call", "tool": "calculator",
                                                       "arguments": {"expression": "12 * 7"},
                                                       "answer": "The answer is 84"})


def _round_trip(name, arguments, final="The answer is 84.", result="84"):
    call = ToolCall(id="c1", function=FunctionCall(name=name, arguments=json.dumps(arguments)))
    return [Message(role="assistant", tool_calls=[call]), Message(role="tool", tool_call_id="c1", content=result),
            Message(role="assistant", content=final)]


def test_reference_is_call_then_tool_result_then_answer():
    call, result, final = tool_use.reference_solution(CALC)
    assert call.tool_calls[0].function.name == "calculator"
    assert json.loads(call.tool_calls[0].function.arguments) == {"expression": "12 * 7"}
    assert (result.role, result.tool_call_id, result.content) == ("tool", call.tool_calls[0].id, "84")
    assert final.content == "The answer is 84."
    assert tool_use.grade(CALC, [call, result, final]).score == 1.0


def test_any_expression_with_the_right_value_is_accepted():
    assert tool_use.grade(CALC, _round_trip("calculator", {"expression": "7*12"})).passed


@pytest.mark.parametrize("response, reason", [
    (answer("The answer is 84."), "no tool call"),
    (answer('{"name": "calculator", "arguments": {"expression": "12 * 7"}}'), "malformed tool call (not parsed)"),
    (_round_trip("calc", {"expression": "12 * 7"}), "malformed tool call: unknown tool 'calc'"),
    (_round_trip("calculator", {}), "malformed tool call: missing argument(s) ['expression']"),
    (_round_trip("calculator", {"expression": 84}), "malformed tool call: argument 'expression' should be string"),
    (_round_trip("get_weather", {"city": "Varo"}), "wrong tool 'get_weather', expected 'calculator'"),
    (_round_trip("calculator", {"expression": "12 * 8"}),
     'wrong arguments {"expression": "12 * 8"}, expected {"expression": "12 * 7"}'),
    (_round_trip("calculator", {"expression": "12 ** 7"}), "wrong arguments"),
    (_round_trip("calculator", {"expression": "12 * 7"}, final="It is 85."), "final answer 'It is 85.' lacks"),
    (_round_trip("calculator", {"expression": "12 * 7"})[:2], "final answer '' lacks"),
])
def test_call_failures_score_zero_with_a_reason(response, reason):
    grade = tool_use.grade(CALC, response)
    assert grade.score == 0.0
    assert grade.reason.startswith(reason)


def test_two_calls_or_a_missing_tool_result_fail():
    two = _round_trip("calculator", {"expression": "12 * 7"})
    two[0] = Message(role="assistant", tool_calls=two[0].tool_calls * 2)
    assert tool_use.grade(CALC, two).reason == "expected one tool call, got 2"
    no_result = [_round_trip("calculator", {"expression": "12 * 7"})[0], Message(role="assistant", content="The answer is 84.")]
    assert tool_use.grade(CALC, no_result).reason == "no tool result for the call"


def test_weather_city_is_case_insensitive():
    prompt = make_prompt("tool_use", [("user", "What is the weather in Varo?")], tags=[], difficulty=0.4, tools=TOOLS,
                         check={"mode": "call", "tool": "get_weather", "arguments": {"city": "Varo"},
                                "answer": "The weather in Varo is sunny, 22 C"})
    assert tool_use.reference_solution(prompt)[-1].content == "The weather in Varo is sunny, 22 C."
    good = _round_trip("get_weather", {"city": "varo"}, final="The weather in Varo is sunny, 22 C.")
    assert tool_use.grade(prompt, good).passed
    assert not tool_use.grade(prompt, _round_trip("get_weather", {"city": "Alder"}, final="x")).passed


def test_needless_or_forbidden_calls_fail():
    greeting = make_prompt("tool_use", [("system", tool_use.SYSTEM_TOOLS), ("user", "Hello! I am Mia.")], tags=[],
                           difficulty=0.4, tools=TOOLS, check={"mode": "direct", "answer": "Hello Mia! How can I help you"})
    assert tool_use.grade(greeting, answer("Hello Mia! How can I help you?")).passed
    called = _round_trip("calculator", {"expression": "1"}, final="Hello Mia! How can I help you?")
    assert tool_use.grade(greeting, called).reason == "unnecessary tool call: no tool was needed"
    disabled = make_prompt("tool_use", [("system", tool_use.SYSTEM_NO_TOOLS), ("user", "What is 2 + 3?")], tags=[],
                           difficulty=0.2, check={"mode": "direct", "answer": "The answer is 5"})
    assert tool_use.grade(disabled, answer("The answer is 5.")).passed
    assert tool_use.grade(disabled, _round_trip("calculator", {"expression": "2+3"}, "The answer is 5.", "5")).reason == (
        "unnecessary tool call: tools are disabled")
    assert tool_use.grade(disabled, answer("The answer is 6.")).score == 0.0


def test_generated_mix_covers_every_mode_and_tool():
    tags = {tag for p in tool_use.generate_prompts("train", 200, seed=0) for tag in p.tags}
    assert {"calculator", "get_weather", "convert", "no_tool_needed", "tools_disabled"} <= tags
    evaluation = tool_use.generate_prompts("eval", 200, seed=0)
    assert all("(" in p.check["arguments"]["expression"] for p in evaluation if "calculator" in p.tags)
