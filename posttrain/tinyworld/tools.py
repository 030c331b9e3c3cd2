"""The tiny world's tools: a calculator, a weather lookup of the world's cities, a unit converter.

The calculator is a small recursive-descent parser over integers, + - * / and parentheses: it
never calls eval, so a model's tool call cannot run code. Tool errors come back as text starting
with 'error:' (what a tool message would carry), never as exceptions, so a rollout can continue.
"""
from __future__ import annotations

import json
import re
from fractions import Fraction
from typing import Any

from posttrain.data.records import FunctionDef, ToolCall, ToolDef
from posttrain.tinyworld.facts import CITIES

MAX_EXPRESSION_CHARS = 80  # long inputs are refused before parsing, which bounds recursion depth


class CalculatorError(ValueError):
    """The expression is not integer arithmetic with + - * / and parentheses, or divides by zero."""


_TOKEN = re.compile(r"\s*(?:(\d+)|([-+*/()]))")


def _tokenize(expression: str) -> list[str]:
    tokens, pos = [], 0
    while pos < len(expression):
        if expression[pos:].strip() == "":
            break
        match = _TOKEN.match(expression, pos)
        if not match:
            raise CalculatorError(f"unexpected character {expression[pos:].lstrip()[0]!r}")
        tokens.append(match.group(1) or match.group(2))
        pos = match.end()
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)*; term := factor (('*'|'/') factor)*;
    factor := '-' factor | '(' expr ')' | integer."""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise CalculatorError("expression ends too early")
        self.pos += 1
        return token

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            value = value + self.term() if self.take() == "+" else value - self.term()
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op, right = self.take(), self.factor()
            if op == "/" and right == 0:
                raise CalculatorError("division by zero")
            value = value * right if op == "*" else value / right
        return value

    def factor(self) -> Fraction:
        token = self.take()
        if token == "-":
            return -self.factor()
        if token == "(":
            value = self.expr()
            if self.take() != ")":
                raise CalculatorError("missing closing parenthesis")
            return value
        if token.isdigit():
            return Fraction(int(token))
        raise CalculatorError(f"unexpected {token!r}")


def calculate(expression: str) -> Fraction:
    """Exact value of an integer arithmetic expression; CalculatorError for anything else."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens = _tokenize(expression)
    if not tokens:
        raise CalculatorError("empty expression")
    parser = _Parser(tokens)
    value = parser.expr()
    if parser.peek() is not None:
        raise CalculatorError(f"unexpected {parser.peek()!r}")
    return value


def format_number(value: Fraction) -> str:
    """Integers as digits; other values as a decimal with at most 3 places ('2.5', '0.333')."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.3f}".rstrip("0")


# unit pairs the converter knows, with the factor to multiply by
UNIT_FACTORS: dict[tuple[str, str], Fraction] = {
    ("km", "m"): Fraction(1000), ("m", "cm"): Fraction(100), ("kg", "g"): Fraction(1000),
    ("h", "min"): Fraction(60), ("min", "s"): Fraction(60), ("l", "ml"): Fraction(1000),
}
UNIT_FACTORS.update({(b, a): 1 / f for (a, b), f in list(UNIT_FACTORS.items())})

WEATHER = {city.name: (city.weather, city.temperature) for city in CITIES}


def weather_report(city: str) -> str:
    """'sunny, 24 C' for a known city (case-insensitive); an error text otherwise."""
    for name, (sky, degrees) in WEATHER.items():
        if name.lower() == city.strip().lower():
            return f"{name}: {sky}, {degrees} C"
    return f"error: unknown city {city!r}"


def convert(value: int, from_unit: str, to_unit: str) -> str:
    """'5000 m' for (5, 'km', 'm'); an error text for an unknown unit pair."""
    factor = UNIT_FACTORS.get((from_unit, to_unit))
    if factor is None:
        return f"error: cannot convert {from_unit} to {to_unit}"
    return f"{format_number(Fraction(value) * factor)} {to_unit}"


def _calculator(expression: str) -> str:
    try:
        return format_number(calculate(expression))
    except CalculatorError as err:
        return f"error: {err}"


def _tool(name: str, description: str, properties: dict[str, str]) -> ToolDef:
    schema = {"type": "object", "properties": {k: {"type": t} for k, t in properties.items()},
              "required": list(properties)}
    return ToolDef(function=FunctionDef(name=name, description=description, parameters=schema))


TOOLS: list[ToolDef] = [
    _tool("calculator", "Evaluate integer arithmetic with + - * / and parentheses.", {"expression": "string"}),
    _tool("get_weather", "Current weather in a city of the world.", {"city": "string"}),
    _tool("convert", "Convert a value between units (km, m, cm, kg, g, h, min, s, l, ml).",
          {"value": "integer", "from_unit": "string", "to_unit": "string"}),
]
_IMPLEMENTATIONS = {"calculator": _calculator, "get_weather": weather_report, "convert": convert}
_JSON_TYPES = {"string": str, "integer": int}


def call_problem(tool_call: ToolCall, tools: list[ToolDef] | None) -> str | None:
    """Why a call is malformed (no tools, unknown tool, bad JSON, missing/extra/mistyped argument), or None."""
    if not tools:
        return "no tools are available"
    by_name = {tool.function.name: tool for tool in tools}
    name = tool_call.function.name
    if name not in by_name:
        return f"unknown tool {name!r}"
    try:
        arguments: Any = json.loads(tool_call.function.arguments)
    except json.JSONDecodeError:
        return "arguments are not valid JSON"
    if not isinstance(arguments, dict):
        return "arguments are not a JSON object"
    properties = by_name[name].function.parameters.get("properties", {})
    missing = [key for key in by_name[name].function.parameters.get("required", []) if key not in arguments]
    if missing:
        return f"missing argument(s) {missing}"
    extra = sorted(set(arguments) - set(properties))
    if extra:
        return f"unknown argument(s) {extra}"
    for key, value in arguments.items():
        expected = _JSON_TYPES[properties[key]["type"]]
        if not isinstance(value, expected) or isinstance(value, bool):
            return f"argument {key!r} should be {properties[key]['type']}"
    return None


def execute_tool_call(tool_call: ToolCall, tools: list[ToolDef] | None) -> str:
    """Run a call against the world's tools; the result (or 'error: ...') as tool-message text."""
    problem = call_problem(tool_call, tools)
    if problem is not None:
        return f"error: {problem}"
    implementation = _IMPLEMENTATIONS.get(tool_call.function.name)
    if implementation is None:
        return f"error: tool {tool_call.function.name!r} is not available in this world"
    return implementation(**json.loads(tool_call.function.arguments))
