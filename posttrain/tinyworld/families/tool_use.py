"""Tool use: emit one well-formed call, read the tool's result, answer with it; or answer directly.

Modes in `check["mode"]`: "call" (the right tool with the right arguments, then a final answer
containing `check["answer"]`), "direct" (no tool is needed, or tools are disabled: any call fails).
Grades are all-or-nothing: a tool call is either usable or not. Eval holds out cities, unit pairs,
names and adds parenthesised 3-number expressions (train has none).
"""
from __future__ import annotations

import json
import random

from posttrain.data.records import FunctionCall, Message, Prompt, ToolCall
from posttrain.judge.grader import Grade, final_answer
from posttrain.tinyworld.facts import Split, cities, people
from posttrain.tinyworld.family import Family, answer, distinct_prompts, family_rng, make_prompt
from posttrain.tinyworld.tools import TOOLS, calculate, call_problem, execute_tool_call

NAME = "tool_use"
SYSTEM_TOOLS = "You can call these tools: calculator, get_weather, convert. Use a tool when you need one."
SYSTEM_NO_TOOLS = "No tools are available. Answer directly."
UNIT_PAIRS = {"train": (("km", "m"), ("kg", "g"), ("h", "min")), "eval": (("m", "cm"), ("min", "s"), ("l", "ml"))}
GREETINGS = {"train": ("Hello! I am {name}.", "Hi there, I am {name}."), "eval": ("Good evening, my name is {name}.",)}


def _expression(split: Split, rng: random.Random) -> str:
    """Train: 'a op b' or 'a op b op c'; eval: '(a op b) op c' (parentheses never seen in train)."""
    a, b, c = rng.randint(10, 99), rng.randint(2, 30), rng.randint(2, 30)
    op1, op2 = rng.choice("+-*"), rng.choice("+-*")
    if split == "eval":
        return f"({a} {op1} {b}) {op2} {c}"
    return f"{a} {op1} {b}" if rng.random() < 0.6 else f"{a} {op1} {b} {op2} {c}"


def final_sentence(tool: str, result: str) -> str:
    """How the final answer states a tool result (without the closing period)."""
    if tool == "get_weather" and ": " in result:
        city, report = result.split(": ", 1)
        return f"The weather in {city} is {report}"
    return f"The answer is {result}"


def _call_case(split: Split, rng: random.Random) -> tuple[str, dict, str]:
    """(question, check, tag) for a prompt that needs a tool."""
    kind = rng.choice(["calculator", "get_weather", "convert"])
    if kind == "calculator":
        expression = _expression(split, rng)
        question = rng.choice(["What is {e}?", "Compute {e}.", "Please calculate {e}."]).format(e=expression)
        arguments: dict = {"expression": expression}
    elif kind == "get_weather":
        city = rng.choice(cities(split)).name
        question = rng.choice(["What is the weather in {c}?", "How is the weather in {c} today?"]).format(c=city)
        arguments = {"city": city}
    else:
        from_unit, to_unit = rng.choice(UNIT_PAIRS[split])
        value = rng.randint(2, 20)
        question = f"How many {to_unit} are in {value} {from_unit}?"
        arguments = {"value": value, "from_unit": from_unit, "to_unit": to_unit}
    final = final_sentence(kind, execute_tool_call(_tool_call(kind, arguments), TOOLS))
    return question, {"mode": "call", "tool": kind, "arguments": arguments, "answer": final}, kind


def _direct_case(split: Split, rng: random.Random) -> tuple[str, dict, str]:
    """(question, check, tag) for a prompt answered without tools (tools are still offered)."""
    name = rng.choice(people(split))
    if rng.random() < 0.5:
        question = rng.choice(GREETINGS[split]).format(name=name)
        return question, {"mode": "direct", "answer": f"Hello {name}! How can I help you"}, "no_tool_needed"
    count = rng.randint(2, 40)
    question = f"{name} has {count} coins. How many coins does {name} have?"
    return question, {"mode": "direct", "answer": f"The answer is {count}"}, "no_tool_needed"


def _draw(split: Split):
    def draw(rng: random.Random) -> Prompt:
        roll = rng.random()
        if roll < 0.15:  # tools disabled: even arithmetic is answered directly
            terms = [rng.randint(2, 50) for _ in range(2 if split == "train" else 3)]
            question = "What is " + " + ".join(map(str, terms)) + "?"
            check = {"mode": "direct", "answer": f"The answer is {sum(terms)}"}
            return make_prompt(NAME, [("system", SYSTEM_NO_TOOLS), ("user", question)],
                               tags=["tools_disabled"], difficulty=0.2, check=check)
        question, check, tag = _call_case(split, rng) if roll < 0.8 else _direct_case(split, rng)
        difficulty = 0.7 if "(" in question else 0.4
        return make_prompt(NAME, [("system", SYSTEM_TOOLS), ("user", question)], tags=[check["mode"], tag],
                           difficulty=difficulty, check=check, tools=TOOLS)
    return draw


def generate_prompts(split: Split, n: int, seed: int) -> list[Prompt]:
    """n distinct tool-use prompts of the split."""
    return distinct_prompts(_draw(split), n, family_rng(NAME, split, seed))


def _tool_call(tool: str, arguments: dict, call_id: str = "call_1") -> ToolCall:
    return ToolCall(id=call_id, function=FunctionCall(name=tool, arguments=json.dumps(arguments)))


def call_round_trip(tool: str, arguments: dict, final: str) -> list[Message]:
    """Assistant call -> tool message with the executed result -> final assistant answer."""
    call = _tool_call(tool, arguments)
    result = execute_tool_call(call, TOOLS)
    return [Message(role="assistant", tool_calls=[call]),
            Message(role="tool", tool_call_id=call.id, name=tool, content=result),
            Message(role="assistant", content=final)]


def reference_solution(prompt: Prompt) -> list[Message]:
    """The call round trip when a tool is needed, else the direct answer."""
    check = prompt.check or {}
    if check["mode"] == "direct":
        return answer(check["answer"] + ".")
    return call_round_trip(check["tool"], check["arguments"], check["answer"] + ".")


def _arguments_match(tool: str, got: dict, expected: dict) -> bool:
    """Calculator: any expression with the same value; other tools: equal (city case-insensitive)."""
    if tool == "calculator":
        try:
            return calculate(got["expression"]) == calculate(expected["expression"])
        except ValueError:
            return False
    normalise = {k: v.strip().lower() if isinstance(v, str) else v for k, v in got.items()}
    return normalise == {k: v.lower() if isinstance(v, str) else v for k, v in expected.items()}


def _call_problem(prompt: Prompt, response: list[Message]) -> str | None:
    """Why the tool-call part of a 'call' response is unusable, or None."""
    check = prompt.check or {}
    calls = [call for m in response if m.role == "assistant" for call in (m.tool_calls or [])]
    if not calls:
        text = final_answer(response)
        return "malformed tool call (not parsed)" if "{" in text or "tool_call" in text else "no tool call"
    if len(calls) > 1:
        return f"expected one tool call, got {len(calls)}"
    call = calls[0]
    problem = call_problem(call, prompt.tools or [])
    if problem is not None:
        return f"malformed tool call: {problem}"
    if call.function.name != check["tool"]:
        return f"wrong tool {call.function.name!r}, expected {check['tool']!r}"
    if not _arguments_match(check["tool"], json.loads(call.function.arguments), check["arguments"]):
        return f"wrong arguments {call.function.arguments}, expected {json.dumps(check['arguments'])}"
    if not any(m.role == "tool" and m.tool_call_id == call.id for m in response):
        return "no tool result for the call"
    return None


def grade(prompt: Prompt, response: list[Message]) -> Grade:
    """1 for the right call (when needed) and a final answer containing the expected sentence."""
    check = prompt.check or {}
    if check["mode"] == "call":
        problem = _call_problem(prompt, response)
        if problem is not None:
            return Grade(0.0, problem)
    elif any(m.tool_calls for m in response):
        why = "tools are disabled" if prompt.tools is None else "no tool was needed"
        return Grade(0.0, f"unnecessary tool call: {why}")
    text = final_answer(response)
    ends_with_answer = bool(response) and response[-1].role == "assistant"
    if not ends_with_answer or check["answer"] not in text:
        return Grade(0.0, f"final answer {text!r} lacks {check['answer']!r}")
    return Grade(1.0, "correct tool use" if check["mode"] == "call" else "answered directly")


def corrupt(prompt: Prompt, response: list[Message], rng: random.Random) -> list[Message]:
    """Direct: an unnecessary calculator call. Call: no call at all, or a wrong argument."""
    check = prompt.check or {}
    if check["mode"] == "direct":
        number = check["answer"].rsplit(" ", 1)[-1] if check["answer"][-1].isdigit() else "1"
        return call_round_trip("calculator", {"expression": number}, check["answer"] + ".")
    if rng.random() < 0.5:
        return answer(check["answer"] + ".")  # right words, but guessed without the tool
    arguments = dict(check["arguments"])
    if check["tool"] == "calculator":
        arguments["expression"] = f"{arguments['expression']} + 1"
    elif check["tool"] == "get_weather":
        arguments["city"] = rng.choice([c.name for c in cities("train") if c.name != arguments["city"]])
    else:
        arguments["value"] += 1
    result = execute_tool_call(_tool_call(check["tool"], arguments), TOOLS)
    return call_round_trip(check["tool"], arguments, final_sentence(check["tool"], result) + ".")


FAMILY = Family(NAME, generate_prompts, reference_solution, grade, corrupt)
