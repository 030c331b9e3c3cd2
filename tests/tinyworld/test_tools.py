"""The calculator parser, the weather and unit tools, and tool-call well-formedness."""
from fractions import Fraction

import pytest

from posttrain.data.records import FunctionCall, ToolCall
from posttrain.tinyworld.tools import (
    TOOLS, CalculatorError, calculate, call_problem, convert, execute_tool_call, format_number, weather_report,
)


@pytest.mark.parametrize("expression, value", [
    ("2 + 3 * 4", 14),          # * binds tighter than +
    ("(2 + 3) * 4", 20),        # parentheses first
    ("10 - 4 - 3", 3),          # left associative
    ("100 / 10 / 5", 2),
    ("-3 + 5", 2),
    ("2 * -(3 + 1)", -8),
    ("((7))", 7),
    ("  12*3+4 ", 40),
    ("7 / 2", Fraction(7, 2)),
])
def test_calculator_hand_cases(expression, value):
    assert calculate(expression) == value


@pytest.mark.parametrize("expression, message", [
    ("__import__('os')", "unexpected character"),
    ("2 ** 3", "unexpected '\\*'"),
    ("1.5 + 2", "unexpected character '.'"),
    ("2 +", "ends too early"),
    ("(2 + 3", "ends too early"),
    ("2 + 3)", "unexpected '\\)'"),
    ("4 / (2 - 2)", "division by zero"),
    ("", "empty"),
    ("abs(3)", "unexpected character 'a'"),
    ("1+" * 50 + "1", "longer than"),
])
def test_calculator_refuses_anything_else(expression, message):
    with pytest.raises(CalculatorError, match=message):
        calculate(expression)


def test_format_number():
    assert format_number(Fraction(12)) == "12"
    assert format_number(Fraction(5, 2)) == "2.5"
    assert format_number(Fraction(1, 3)) == "0.333"


def test_weather_and_convert():
    assert weather_report("Miravel") == "Miravel: sunny, 24 C"
    assert weather_report("  miravel ") == "Miravel: sunny, 24 C"
    assert weather_report("Atlantis").startswith("error: unknown city")
    assert convert(5, "km", "m") == "5000 m"
    assert convert(90, "min", "h") == "1.5 h"
    assert convert(3, "km", "kg") == "error: cannot convert km to kg"


def _call(name: str, arguments: str) -> ToolCall:
    return ToolCall(id="c1", function=FunctionCall(name=name, arguments=arguments))


def test_execute_tool_call_runs_each_tool():
    assert execute_tool_call(_call("calculator", '{"expression": "(2 + 3) * 4"}'), TOOLS) == "20"
    assert execute_tool_call(_call("get_weather", '{"city": "Lunden"}'), TOOLS) == "Lunden: rainy, 12 C"
    assert execute_tool_call(_call("convert", '{"value": 2, "from_unit": "h", "to_unit": "min"}'), TOOLS) == "120 min"
    assert execute_tool_call(_call("calculator", '{"expression": "1 / 0"}'), TOOLS) == "error: division by zero"


@pytest.mark.parametrize("name, arguments, problem", [
    ("search", '{"q": "x"}', "unknown tool 'search'"),
    ("calculator", "{}", "missing argument(s) ['expression']"),
    ("calculator", '{"expression": "1", "mode": "x"}', "unknown argument(s) ['mode']"),
    ("calculator", '{"expression": 12}', "argument 'expression' should be string"),
    ("convert", '{"value": "5", "from_unit": "km", "to_unit": "m"}', "argument 'value' should be integer"),
    ("convert", '{"value": true, "from_unit": "km", "to_unit": "m"}', "argument 'value' should be integer"),
])
def test_malformed_calls_are_named(name, arguments, problem):
    call = _call(name, arguments)
    assert call_problem(call, TOOLS) == problem
    assert execute_tool_call(call, TOOLS) == f"error: {problem}"


def test_well_formed_call_has_no_problem_and_tools_list_limits_calls():
    call = _call("get_weather", '{"city": "Varo"}')
    assert call_problem(call, TOOLS) is None
    assert call_problem(call, TOOLS[:1]) == "unknown tool 'get_weather'"
    assert execute_tool_call(call, None) == "error: no tools are available"  # a prompt with tools disabled
