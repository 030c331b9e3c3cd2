"""Verifiable answer constraints (IFEval's idea, our own small set): describe, check and satisfy.

A constraint is a plain dict so it can live in a Prompt's `check`: {"type": "words", "n": 7}.
Each type has an instruction text, a checker, and a place in `render`, which writes a text that
satisfies a list of compatible constraints from a topic's sentences (the reference answers).
"""
from __future__ import annotations

import json
import re
from typing import Any

Constraint = dict[str, Any]

TYPES = ("upper", "lower", "words", "max_words", "bullets", "bullet_list", "paragraphs",
         "ends_with", "starts_with", "json", "no_commas", "quotes")

# pairs that cannot hold together (or that `render` does not combine): a prompt never asks for both
_CONFLICTS = {
    frozenset(pair) for pair in [
        ("upper", "lower"), ("upper", "ends_with"), ("upper", "starts_with"), ("lower", "ends_with"),
        ("lower", "starts_with"), ("json", "bullets"), ("json", "bullet_list"), ("json", "paragraphs"),
        ("json", "words"), ("json", "max_words"), ("json", "no_commas"), ("json", "ends_with"),
        ("json", "starts_with"), ("json", "quotes"), ("json", "upper"), ("bullets", "paragraphs"),
        ("bullets", "words"), ("bullets", "max_words"), ("bullets", "bullet_list"),
        ("bullet_list", "paragraphs"), ("bullet_list", "words"), ("bullet_list", "max_words"),
        ("paragraphs", "words"), ("paragraphs", "max_words"), ("words", "max_words"),
        ("words", "ends_with"), ("words", "starts_with"), ("max_words", "ends_with"),
        ("max_words", "starts_with"), ("bullet_list", "quotes"), ("bullets", "quotes"),
        ("quotes", "ends_with"), ("quotes", "starts_with"), ("bullets", "starts_with"),
        ("bullet_list", "starts_with"),
    ]
}

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_BULLET = re.compile(r"^\s*[-*] \S")


def compatible(types: list[str]) -> bool:
    """True when no two of these constraint types conflict (and none repeats)."""
    if len(set(types)) != len(types):
        return False
    return not any(frozenset((a, b)) in _CONFLICTS for i, a in enumerate(types) for b in types[i + 1:])


def describe(constraint: Constraint) -> str:
    """The instruction a prompt uses to ask for this constraint."""
    kind = constraint["type"]
    texts = {
        "upper": "Answer in all upper case.",
        "lower": "Answer in all lower case.",
        "no_commas": "Do not use any commas.",
        "quotes": "Wrap your answer in double quotes.",
        "bullet_list": "Answer as a bulleted list.",
    }
    if kind in texts:
        return texts[kind]
    if kind == "words":
        return f"Use exactly {constraint['n']} words."
    if kind == "max_words":
        return f"Use at most {constraint['n']} words."
    if kind == "bullets":
        return f"Use exactly {constraint['n']} bullet points."
    if kind == "paragraphs":
        return f"Write {constraint['n']} paragraphs separated by blank lines."
    if kind == "ends_with":
        return f"End your answer with '{constraint['phrase']}'"
    if kind == "starts_with":
        return f"Start your answer with '{constraint['phrase']}'"
    if kind == "json":
        keys = " and ".join(f'"{key}"' for key in constraint["keys"])
        return f"Answer in JSON with the keys {keys}."
    raise ValueError(f"unknown constraint type {kind!r}")


def label(constraint: Constraint) -> str:
    """Short name for reasons: 'words=7', "ends_with='Thank you.'"."""
    params = {k: v for k, v in constraint.items() if k != "type"}
    if not params:
        return constraint["type"]
    return constraint["type"] + "=" + ",".join(repr(v) if isinstance(v, str) else str(v) for v in params.values())


def count_words(text: str) -> int:
    """Words are runs of letters and digits (an apostrophe suffix stays in the word)."""
    return len(_WORD.findall(text))


def _json_keys_ok(text: str, keys: list[str]) -> bool:
    try:
        value = json.loads(text.strip())
    except json.JSONDecodeError:
        return False
    return isinstance(value, dict) and set(value) == set(keys)


def _paragraphs(text: str) -> list[str]:
    return [part for part in re.split(r"\n\s*\n", text.strip()) if part.strip()]


def satisfied(constraint: Constraint, text: str) -> bool:
    """Whether `text` meets the constraint."""
    kind, stripped = constraint["type"], text.strip()
    has_letters = any(ch.isalpha() for ch in text)
    lines = [line for line in stripped.splitlines() if line.strip()]
    checks = {
        "upper": lambda: has_letters and text == text.upper(),
        "lower": lambda: has_letters and text == text.lower(),
        "words": lambda: count_words(text) == constraint.get("n"),
        "max_words": lambda: 1 <= count_words(text) <= constraint["n"],
        "bullets": lambda: sum(1 for line in lines if _BULLET.match(line)) == constraint["n"],
        "bullet_list": lambda: len(lines) >= 2 and all(_BULLET.match(line) for line in lines),
        "paragraphs": lambda: len(_paragraphs(text)) == constraint["n"],
        "ends_with": lambda: stripped.endswith(constraint["phrase"]),
        "starts_with": lambda: stripped.startswith(constraint["phrase"]),
        "json": lambda: _json_keys_ok(text, constraint["keys"]),
        "no_commas": lambda: "," not in text,
        "quotes": lambda: len(stripped) >= 2 and stripped[0] == '"' and stripped[-1] == '"',
    }
    if kind not in checks:
        raise ValueError(f"unknown constraint type {kind!r}")
    return bool(checks[kind]())


def check_all(constraints: list[Constraint], text: str) -> list[tuple[str, bool]]:
    """(label, satisfied) for each constraint, for `judge.grader.grade_checks`."""
    return [(label(c), satisfied(c, text)) for c in constraints]


def first_words(sentences: list[str], n: int) -> str:
    """The first n words of the sentences as one sentence ending with a period."""
    words = " ".join(sentences).split()
    while len(words) < n:  # never short: repeat the text (only for large n)
        words += " ".join(sentences).split()
    return " ".join(words[:n]).rstrip(".,!?") + "."


def _body(constraints: dict[str, Constraint], sentences: list[str], topic: str) -> str:
    """The answer's shape: JSON, bullets, paragraphs, a word count or plain sentences."""
    if "json" in constraints:
        values = {"topic": topic, "summary": sentences[0], "detail": sentences[1], "note": sentences[2]}
        return json.dumps({key: values[key] for key in constraints["json"]["keys"]})
    if "bullets" in constraints:
        return "\n".join(f"- {s}" for s in sentences[: constraints["bullets"]["n"]])
    if "bullet_list" in constraints:
        return "\n".join(f"- {s}" for s in sentences[:2])
    if "paragraphs" in constraints:
        return "\n\n".join(sentences[: constraints["paragraphs"]["n"]])
    if "words" in constraints:
        return first_words(sentences, constraints["words"]["n"])
    if "max_words" in constraints:
        return first_words(sentences, min(constraints["max_words"]["n"], count_words(sentences[0])))
    return " ".join(sentences[:2])


JSON_KEYS = ("topic", "summary", "detail", "note")


def render(constraints: list[Constraint], sentences: list[str], topic: str = "") -> str:
    """A text about `topic` (from its `sentences`) that satisfies every constraint.

    Order matters: shape first, then commas and case, then the fixed phrases, then the quotes
    that must wrap everything.
    """
    by_type = {c["type"]: c for c in constraints}
    if not compatible(list(by_type)) or len(by_type) != len(constraints):
        raise ValueError(f"constraints conflict: {[label(c) for c in constraints]}")
    if "no_commas" in by_type:
        sentences = [s.replace(",", "") for s in sentences]
    text = _body(by_type, sentences, topic)
    if "upper" in by_type:
        text = text.upper()
    if "lower" in by_type:
        text = text.lower()
    if "starts_with" in by_type:
        text = f"{by_type['starts_with']['phrase']} {text}"
    if "ends_with" in by_type:
        text = f"{text} {by_type['ends_with']['phrase']}"
    if "quotes" in by_type:
        text = f'"{text}"'
    return text
