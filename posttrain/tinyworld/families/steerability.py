"""Steerability: a system prompt sets the style; the answer must follow it and still be right.

Styles are constraints (all caps, at most N words, a bulleted list, start with 'Sure!', ...); the
content is a world fact or an arithmetic result, checked as a whole word. Score = fraction of
(style checks + content). Train shows one style on a fixed set of (style, question kind) pairs;
eval uses the held-out pairs or two styles at once, larger numbers and tighter word limits.
Questions about facts use every city in both splits: the fact comes from pretraining.
"""
from __future__ import annotations

import itertools
import random
import re

from posttrain.data.records import Message, Prompt
from posttrain.judge.grader import Grade, final_answer, grade_checks
from posttrain.tinyworld.constraints import Constraint, check_all, compatible, count_words, render
from posttrain.tinyworld.facts import CITIES, FRUIT_BY_NAME, Split
from posttrain.tinyworld.family import Family, answer, distinct_prompts, family_rng, make_prompt

NAME = "steerability"
STYLES = ("upper", "lower", "max_words", "bullet_list", "starts_with", "ends_with", "quotes")
KINDS = ("fruit", "river", "weather", "product")
_PAIRS = list(itertools.product(STYLES, KINDS))
EVAL_PAIRS = _PAIRS[1::3]  # (style, question kind) pairs never shown in train
TRAIN_PAIRS = [pair for pair in _PAIRS if pair not in EVAL_PAIRS]
END_PHRASES = {"train": "Hope this helps.", "eval": "Glad to help."}
_SYSTEM = {"upper": "Answer in all caps.", "lower": "Answer in all lower case.",
           "max_words": "Answer in at most {n} words.", "bullet_list": "Answer as a bulleted list.",
           "starts_with": "Start every answer with '{phrase}'", "ends_with": "End every answer with '{phrase}'",
           "quotes": "Wrap every answer in double quotes."}


def _question(kind: str, split: Split, rng: random.Random) -> tuple[str, list[str], str, str]:
    """(question, two answer sentences, short answer, expected content word)."""
    city = rng.choice(CITIES)
    if kind == "fruit":
        fruit = FRUIT_BY_NAME[city.fruit]
        name = fruit.name.capitalize()
        return (f"What fruit grows in {city.name}?", [f"{name} grow in {city.name}.", f"They are {fruit.color} and {fruit.taste}."],
                f"{name} grow in {city.name}.", fruit.name)
    if kind == "river":
        return (f"Which river runs through {city.name}?", [f"The {city.river} river runs through {city.name}.", "Boats sail on it."],
                f"The {city.river} river.", city.river)
    if kind == "weather":
        return (f"What is the weather usually like in {city.name}?",
                [f"The weather in {city.name} is often {city.weather}.", f"It is about {city.temperature} degrees."],
                f"Often {city.weather}.", city.weather)
    high = 9 if split == "train" else 19
    a, b = rng.randint(2, high), rng.randint(2, high)
    return f"What is {a} * {b}?", [f"{a} * {b} = {a * b}.", f"The answer is {a * b}."], f"The answer is {a * b}.", str(a * b)


def _style(kind: str, split: Split, short: str, rng: random.Random) -> Constraint:
    if kind == "max_words":
        return {"type": kind, "n": count_words(short) + (rng.randint(0, 4) if split == "train" else 0)}
    if kind == "starts_with":
        return {"type": kind, "phrase": "Sure!"}
    if kind == "ends_with":
        return {"type": kind, "phrase": END_PHRASES[split]}
    return {"type": kind}


def _pick(split: Split, rng: random.Random) -> tuple[list[str], str]:
    if split == "train":
        style, kind = rng.choice(TRAIN_PAIRS)
        return [style], kind
    if rng.random() < 0.5:
        style, kind = rng.choice(EVAL_PAIRS)
        return [style], kind
    pairs = [list(p) for p in itertools.combinations(STYLES, 2) if compatible(list(p))]
    return rng.choice(pairs), rng.choice(KINDS)


def _draw(split: Split):
    def draw(rng: random.Random) -> Prompt:
        style_types, kind = _pick(split, rng)
        question, sentences, short, expected = _question(kind, split, rng)
        constraints = [_style(t, split, short, rng) for t in style_types]
        system = " ".join(_SYSTEM[c["type"]].format(**c) for c in constraints)
        check = {"constraints": constraints, "expected": expected, "sentences": sentences, "short": short}
        return make_prompt(NAME, [("system", system), ("user", question)], tags=style_types + [kind],
                           difficulty=0.3 * len(constraints), check=check)
    return draw


def generate_prompts(split: Split, n: int, seed: int) -> list[Prompt]:
    """n distinct system-styled questions of the split."""
    return distinct_prompts(_draw(split), n, family_rng(NAME, split, seed))


def reference_solution(prompt: Prompt) -> list[Message]:
    """The right content in the requested style (the short form when words are limited)."""
    check = prompt.check or {}
    limited = any(c["type"] == "max_words" for c in check["constraints"])
    return answer(render(check["constraints"], [check["short"]] if limited else check["sentences"]))


def _mentions(text: str, expected: str) -> bool:
    return re.search(rf"\b{re.escape(expected)}\b", text, flags=re.IGNORECASE) is not None


def grade(prompt: Prompt, response: list[Message]) -> Grade:
    """Fraction of (style constraints + correct content) that hold in the final answer."""
    check = prompt.check or {}
    text = final_answer(response)
    if not text.strip():
        return Grade(0.0, "empty answer")
    content = (f"content {check['expected']!r}", _mentions(text, check["expected"]))
    return grade_checks(check_all(check["constraints"], text) + [content])


def corrupt(prompt: Prompt, response: list[Message], rng: random.Random) -> list[Message]:
    """The style ignored (a plain answer), or the style kept with the content wrong."""
    check = prompt.check or {}
    plain = answer(" ".join(check["sentences"]))
    if rng.random() < 0.5 and not grade(prompt, plain).passed:
        return plain
    expected = check["expected"]
    wrong = str(int(expected) + 1) if expected.isdigit() else "unknown"
    return answer(re.sub(rf"\b{re.escape(expected)}\b", wrong, final_answer(response), flags=re.IGNORECASE))


FAMILY = Family(NAME, generate_prompts, reference_solution, grade, corrupt)
