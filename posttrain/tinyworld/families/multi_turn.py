"""Multi-turn: a question, the assistant's answer, then "Now revise it under a new constraint".

Graded on the final answer: each new constraint, plus keeping the key content (the fruit, river,
number or topic of the first answer). Score = fraction of those checks. Train uses one revision on
a fixed set of (question kind, revision) pairs; eval uses the held-out pairs or two revisions at
once, held-out cities, larger numbers, a held-out end phrase and tighter word limits.
"""
from __future__ import annotations

import itertools
import random
import re

from posttrain.data.records import Message, Prompt
from posttrain.judge.grader import Grade, final_answer, grade_checks
from posttrain.tinyworld.constraints import Constraint, check_all, compatible, count_words, render
from posttrain.tinyworld.facts import FRUIT_BY_NAME, NATURE, Split, cities, topic_sentences, topics
from posttrain.tinyworld.family import Family, answer, distinct_prompts, family_rng, make_prompt

NAME = "multi_turn"
KINDS = ("fruit", "river", "sum", "describe")
REVISIONS = ("upper", "lower", "max_words", "no_commas", "quotes", "bullet_list", "ends_with")
END_PHRASES = {"train": ("Thank you.", "That is all."), "eval": ("See you soon.",)}
_PAIRS = list(itertools.product(KINDS, REVISIONS))
EVAL_PAIRS = _PAIRS[::3]  # (question kind, revision) pairs never shown in train
TRAIN_PAIRS = [pair for pair in _PAIRS if pair not in EVAL_PAIRS]
_ASKS = {"upper": "say it in upper case", "lower": "say it in lower case", "max_words": "use at most {n} words",
         "no_commas": "say it without commas", "quotes": "wrap it in double quotes",
         "bullet_list": "turn it into a bulleted list", "ends_with": "end it with '{phrase}'"}


def _first_turn(kind: str, split: Split, rng: random.Random) -> tuple[str, list[str], str, str]:
    """(question, two answer sentences, short answer, key content word)."""
    city = rng.choice(cities(split))
    if kind == "fruit":
        fruit = FRUIT_BY_NAME[city.fruit]
        sentences = [f"{fruit.name.capitalize()} grow in {city.name}, on the {city.river} river.",
                     f"They are {fruit.color} and {fruit.taste}."]
        return f"What fruit grows in {city.name}?", sentences, f"{fruit.name.capitalize()} grow in {city.name}.", fruit.name
    if kind == "river":
        sentences = [f"The {city.river} river runs through {city.name}.", "Boats carry bread, fish and fruit along it."]
        return f"Which river runs through {city.name}?", sentences, f"The {city.river} river.", city.river
    if kind == "sum":
        a, b = (rng.randint(2, 30), rng.randint(2, 30)) if split == "train" else (rng.randint(31, 99), rng.randint(31, 99))
        sentences = [f"{a} + {b} = {a + b}.", f"So, the answer is {a + b}."]
        return f"What is {a} + {b}?", sentences, f"The answer is {a + b}.", str(a + b)
    topic = rng.choice(topics(split))
    all_sentences = topic_sentences(topic)
    # a second sentence with a comma, so that "say it without commas" has something to change
    second = next((s for s in all_sentences[1:] if "," in s), all_sentences[1])
    sentences = [all_sentences[0], second]
    key = topic.split()[-1] if topic in NATURE else topic
    return f"Describe {topic}.", sentences, all_sentences[0], key


def _revision(kind: str, split: Split, short: str, rng: random.Random) -> Constraint:
    if kind == "max_words":
        slack = rng.randint(0, 3) if split == "train" else 0
        return {"type": kind, "n": count_words(short) + slack}
    if kind == "ends_with":
        return {"type": kind, "phrase": rng.choice(END_PHRASES[split])}
    return {"type": kind}


def _revision_types(split: Split, rng: random.Random) -> tuple[str, list[str]]:
    if split == "train":
        kind, revision = rng.choice(TRAIN_PAIRS)
        return kind, [revision]
    if rng.random() < 0.5:
        kind, revision = rng.choice(EVAL_PAIRS)
        return kind, [revision]
    pairs = [list(p) for p in itertools.combinations(REVISIONS, 2) if compatible(list(p))]
    return rng.choice(KINDS), rng.choice(pairs)


def _draw(split: Split):
    def draw(rng: random.Random) -> Prompt:
        kind, revision_types = _revision_types(split, rng)
        question, sentences, short, keep = _first_turn(kind, split, rng)
        constraints = [_revision(t, split, short, rng) for t in revision_types]
        asks = " and ".join(_ASKS[c["type"]].format(**c) for c in constraints)
        messages = [("user", question), ("assistant", " ".join(sentences)), ("user", f"Now {asks}" + ("" if asks.endswith("'") else "."))]
        check = {"constraints": constraints, "keep": keep, "sentences": sentences, "short": short}
        return make_prompt(NAME, messages, tags=[kind] + revision_types,
                           difficulty=0.3 * len(constraints), check=check)
    return draw


def generate_prompts(split: Split, n: int, seed: int) -> list[Prompt]:
    """n distinct two-turn revision prompts of the split."""
    return distinct_prompts(_draw(split), n, family_rng(NAME, split, seed))


def reference_solution(prompt: Prompt) -> list[Message]:
    """The first answer rewritten under the new constraints (the short form when words are limited)."""
    check = prompt.check or {}
    constraints = check["constraints"]
    limited = any(c["type"] == "max_words" for c in constraints)
    return answer(render(constraints, [check["short"]] if limited else check["sentences"]))


def grade(prompt: Prompt, response: list[Message]) -> Grade:
    """Fraction of (new constraints + keeps the key content) that hold in the final answer."""
    check = prompt.check or {}
    text = final_answer(response)
    if not text.strip():
        return Grade(0.0, "empty answer")
    keeps = re.search(rf"\b{re.escape(check['keep'])}\b", text, flags=re.IGNORECASE) is not None
    return grade_checks(check_all(check["constraints"], text) + [(f"keeps {check['keep']!r}", keeps)])


def corrupt(prompt: Prompt, response: list[Message], rng: random.Random) -> list[Message]:
    """The revision ignored (the first answer repeated), or the key content lost."""
    first = next(m.content or "" for m in prompt.messages if m.role == "assistant")
    if rng.random() < 0.5 and not grade(prompt, answer(first)).passed:
        return answer(first)
    keep = (prompt.check or {})["keep"]
    return answer(re.sub(rf"\b{re.escape(keep)}\b", "it", final_answer(response), flags=re.IGNORECASE))


FAMILY = Family(NAME, generate_prompts, reference_solution, grade, corrupt)
