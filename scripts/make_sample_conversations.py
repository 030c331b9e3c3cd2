"""Write posttrain/data/samples/conversations.jsonl: the sample chats the first demo ships.

About 200 valid conversations (plain Q&A, with system prompts, multi-turn, tool calls answered by tool
results) and 8 malformed rows of different kinds, so the quarantined share (8 of 208, 3.8%) stays under
the 5% default. Deterministic: the same seed writes the same bytes.

    python scripts/make_sample_conversations.py [--out PATH] [--seed N]
"""
from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from posttrain.data.records import Conversation

OUT = Path(__file__).resolve().parents[1] / "posttrain" / "data" / "samples" / "conversations.jsonl"
N_VALID = 200

CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
            "Egypt": "Cairo", "Canada": "Ottawa", "Chile": "Santiago", "India": "New Delhi", "Spain": "Madrid"}
SYSTEMS = ["You are a concise assistant.", "Answer in one sentence.", "You are a friendly tutor.",
           "Reply in lowercase only.", "You are a helpful assistant. Use tools when arithmetic is needed."]
CALCULATOR = {"type": "function", "function": {
    "name": "calculator", "description": "Evaluate an arithmetic expression.",
    "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}, "required": ["expression"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
SKIES = ["sunny", "cloudy", "rainy", "windy", "snowy"]


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def arithmetic(rng: random.Random) -> dict:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return {"messages": [user(f"What is {a} + {b}?"), assistant(f"{a} + {b} = {a + b}.")]}


def capital(rng: random.Random) -> dict:
    country = rng.choice(sorted(CAPITALS))
    messages = [user(f"What is the capital of {country}?"), assistant(f"The capital of {country} is {CAPITALS[country]}.")]
    if rng.random() < 0.5:
        messages.insert(0, {"role": "system", "content": rng.choice(SYSTEMS)})
    return {"messages": messages}


def multi_turn(rng: random.Random) -> dict:
    n = rng.randint(3, 9)
    words = rng.sample(["apple", "river", "stone", "cloud", "lamp", "bird", "chair", "road", "sea", "tree"], n)
    return {"messages": [
        {"role": "system", "content": rng.choice(SYSTEMS)},
        user(f"List {n} words."), assistant(", ".join(words) + "."),
        user("Now only the first three, in capitals."), assistant(", ".join(w.upper() for w in words[:3]) + "."),
    ]}


def calculator_call(rng: random.Random, index: int) -> dict:
    a, b = rng.randint(10, 999), rng.randint(2, 99)
    expression = f"{a} * {b}"
    call_id = f"call_{index}"
    call = {"id": call_id, "type": "function",
            "function": {"name": "calculator", "arguments": json.dumps({"expression": expression})}}
    return {"tools": [CALCULATOR], "messages": [
        {"role": "system", "content": SYSTEMS[-1]},
        user(f"What is {expression}?"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "name": "calculator", "content": str(a * b)},
        assistant(f"{expression} = {a * b}."),
    ]}


def weather_calls(rng: random.Random, index: int) -> dict:
    """Two parallel tool calls, answered in order, then the assistant sums them up."""
    cities = rng.sample(sorted(CAPITALS.values()), 2)
    calls = [{"id": f"call_{index}_{k}", "type": "function",
              "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
             for k, city in enumerate(cities)]
    skies = [rng.choice(SKIES) for _ in cities]
    results = [{"role": "tool", "tool_call_id": call["id"], "name": "get_weather",
                "content": json.dumps({"sky": sky, "celsius": rng.randint(-5, 35)})}
               for call, sky in zip(calls, skies)]
    answer = assistant(f"It is {skies[0]} in {cities[0]} and {skies[1]} in {cities[1]}.")
    return {"tools": [WEATHER], "messages": [user(f"Weather in {cities[0]} and {cities[1]}?"),
                                              {"role": "assistant", "content": None, "tool_calls": calls},
                                              *results, answer]}


def valid_rows(rng: random.Random) -> list[dict]:
    makers = [arithmetic, capital, multi_turn, calculator_call, weather_calls]
    rows = []
    for index in range(N_VALID):
        maker = makers[index % len(makers)]
        row = maker(rng, index) if maker in (calculator_call, weather_calls) else maker(rng)
        Conversation.model_validate(row)  # a sample meant to be valid must be valid
        rows.append(row)
    return rows


def malformed_lines() -> list[str]:
    """One line per kind of bad row; each comment says which quarantine reason it must get."""
    hi, ok = user("hi"), assistant("hello")
    bad_args = {"id": "c1", "type": "function", "function": {"name": "calculator", "arguments": "{expression: 2+2}"}}
    rows = [
        json.dumps({"messages": [hi, ok]})[:-7],  # bad_json: cut off mid-row
        json.dumps([hi, ok]),  # not_an_object: a bare list of messages
        json.dumps({"conversation": [hi, ok]}),  # missing_field: messages (and an unknown field)
        json.dumps({"messages": [ok, hi, ok]}),  # role_order: assistant first
        json.dumps({"messages": [hi, {"role": "bot", "content": "hello"}]}),  # invalid_value: unknown role
        json.dumps({"messages": [hi, {"role": "assistant", "tool_calls": [bad_args]},  # bad_tool_arguments
                                 {"role": "tool", "tool_call_id": "c1", "content": "4"}, ok]}),
        json.dumps({"messages": [hi, {"role": "assistant", "content": 42}]}),  # wrong_type: content a number
        json.dumps({"messages": [hi, {"role": "tool", "content": "4"}, ok]}),  # role_order: no pending call
    ]
    return rows


def build_lines(seed: int) -> list[str]:
    """Valid rows with the malformed ones spread evenly between them."""
    rng = random.Random(seed)
    lines = [json.dumps(row, ensure_ascii=False) for row in valid_rows(rng)]
    bad = malformed_lines()
    step = len(lines) // len(bad)
    for k, line in enumerate(bad):
        lines.insert(k * (step + 1) + step // 2, line)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    lines = build_lines(args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} rows to {args.out}")


if __name__ == "__main__":
    main()
