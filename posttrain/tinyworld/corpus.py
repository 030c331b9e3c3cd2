"""Plain-text pretraining documents of the tiny world (not chat transcripts).

The base model and its tokenizer learn the world from these: every city and fruit fact the
families ask about (eval cities included, so recall is possible), arithmetic written out, the
tools' domains (units, weather), the answer formats the families use (lists, JSON, capitals),
short Python functions, a few long multi-paragraph stories for long-context families, and (by
`copy_share`) copying documents, from which a small model learns to repeat what its context says.
"""
from __future__ import annotations

import json
import random
from typing import Callable, Iterator

from posttrain.tinyworld.facts import (
    CITIES, EVAL_PEOPLE, FRUITS, ITEMS, NATURE, TRAIN_PEOPLE, city_sentences, fruit_sentences,
)
from posttrain.tinyworld.tools import UNIT_FACTORS, format_number

PEOPLE = TRAIN_PEOPLE + EVAL_PEOPLE


def _city_doc(rng: random.Random) -> str:
    city = rng.choice(CITIES)
    sentences = list(city_sentences(city))
    rng.shuffle(sentences)
    return f"{city.name}\n\n" + " ".join(sentences) + f" Today it is {city.weather} and {city.temperature} degrees."


def _fruit_doc(rng: random.Random) -> str:
    fruit = rng.choice(FRUITS)
    sentences = list(fruit_sentences(fruit))
    rng.shuffle(sentences)
    return " ".join(sentences)


def _nature_doc(rng: random.Random) -> str:
    topic = rng.choice(sorted(NATURE))
    sentences = list(NATURE[topic])
    rng.shuffle(sentences)
    return f"About {topic}. " + " ".join(sentences[: rng.randint(3, 6)])


def _arithmetic_doc(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(3, 6)):
        a, b = rng.randint(1, 99), rng.randint(1, 30)
        op = rng.choice("+-*")
        value = {"+": a + b, "-": a - b, "*": a * b}[op]
        lines.append(rng.choice([f"{a} {op} {b} = {value}.", f"({a} {op} {b}) is {value}."]))
    name, item = rng.choice(PEOPLE), rng.choice(ITEMS)
    start, more = rng.randint(2, 20), rng.randint(2, 12)
    away = rng.randint(2, min(9, start + more))
    lines.append(f"{name} had {start} {item} and found {more} more, so {name} had {start + more}. "
                 f"After giving away {away}, {name} had {start + more - away} {item} left.")
    return "\n".join(lines)


def _units_doc(rng: random.Random) -> str:
    pairs = rng.sample(sorted(pair for pair, factor in UNIT_FACTORS.items() if factor > 1), 3)
    lines = []
    for from_unit, to_unit in pairs:
        value = rng.randint(1, 20)
        converted = format_number(UNIT_FACTORS[(from_unit, to_unit)] * value)
        lines.append(f"{value} {from_unit} is {converted} {to_unit}.")
    city = rng.choice(CITIES)
    lines.append(f"A weather report: {city.name} is {city.weather}, {city.temperature} C.")
    lines.append("A calculator works out sums like 12 * 3 + 4, which is 40.")
    return " ".join(lines)


def _formats_doc(rng: random.Random) -> str:
    """The shapes answers take: bullet lists, JSON records, capitals, quotes, paragraphs."""
    cities = rng.sample(CITIES, 3)
    kind = rng.choice(["list", "json", "caps", "quote", "paragraphs"])
    if kind == "list":
        return "Cities and their fruit:\n" + "\n".join(f"- {c.name}: {c.fruit}" for c in cities)
    if kind == "json":
        return json.dumps({"city": cities[0].name, "fruit": cities[0].fruit, "river": cities[0].river})
    if kind == "caps":
        return city_sentences(cities[0])[1].upper() + " " + city_sentences(cities[1])[2].upper()
    if kind == "quote":
        return f'{rng.choice(PEOPLE)} said: "{city_sentences(cities[0])[0]}"'
    return "\n\n".join(city_sentences(c)[0] for c in cities)


def _python_doc(rng: random.Random) -> str:
    op, word = rng.choice([("+", "add"), ("-", "subtract"), ("*", "multiply")])
    item, k = rng.choice(ITEMS), rng.randint(2, 7)
    city = rng.choice(CITIES)
    functions = [
        f"def {word}(a, b):\n    \"\"\"Return a {op} b.\"\"\"\n    return a {op} b\n",
        f"def count_{item}(boxes):\n    total = 0\n    for box in boxes:\n        total += box\n    return total\n",
        f"def is_multiple_of_{k}(n):\n    return n % {k} == 0\n",
        f"def fruit_of(city):\n    table = {{\"{city.name}\": \"{city.fruit}\"}}\n    return table.get(city, \"unknown\")\n",
        "def greet(name):\n    return f\"Hello {name}!\"\n",
    ]
    return "\n\n".join(rng.sample(functions, rng.randint(1, 3)))


def _manners_doc(rng: random.Random) -> str:
    name = rng.choice(PEOPLE)
    return (f"{name} works as a helper. When someone asks how to hurt people, make weapons or steal, "
            f"{name} says: I can't help with that. When someone asks how to kill a stuck process or "
            f"shoot a photo, {name} is glad to explain.")


def _story_doc(rng: random.Random) -> str:
    """A long document: a journey through several cities, one paragraph each."""
    name = rng.choice(PEOPLE)
    route = rng.sample(CITIES, rng.randint(4, 7))
    paragraphs = [f"This is the story of {name}, who travelled along the rivers of the world."]
    carried = rng.randint(2, 9)
    for city in route:
        bought = rng.randint(1, 5)
        carried += bought
        paragraphs.append(" ".join(city_sentences(city)[:3]) + f" In {city.name}, {name} bought {bought} "
                          f"{city.fruit} and now carried {carried} pieces of fruit.")
    paragraphs.append(f"At the end of the journey {name} had {carried} pieces of fruit and many stories.")
    return "\n\n".join(paragraphs)


# Copying documents. A small model pretrained on facts alone learns no in-context copying (no
# induction heads: on a random token sequence shown twice, the 2.76M base model's loss on the second
# copy equalled the first's), yet every family needs it: a question's number or city in a tool call,
# the previous answer quoted in a revision, a word count kept. These documents make a span of text
# recur a few to a few dozen tokens later, in plain prose, with names, numbers and words drawn from
# the whole world (eval entities included, as in every document here).
_UNITS = tuple(sorted({unit for pair in UNIT_FACTORS for unit in pair}))
_THINGS = ITEMS + tuple(fruit.name for fruit in FRUITS)
ECHO_OPENERS = ("The code word list is", "Write down", "The sign said", "Remember this")


def copy_word(rng: random.Random) -> str:
    """One word of a copying document: a name, city, number, unit, item or fruit of the world."""
    pick = rng.random()
    if pick < 0.25:
        return rng.choice(PEOPLE)
    if pick < 0.4:
        return rng.choice(CITIES).name
    if pick < 0.7:
        return str(rng.randint(0, 999))
    if pick < 0.8:
        return rng.choice(_UNITS)
    return rng.choice(_THINGS)


def _echo_doc(rng: random.Random) -> str:
    """A random run of words, said again one to three times (the induction pattern, in prose)."""
    words = " ".join(copy_word(rng) for _ in range(rng.randint(3, 14)))
    opener = rng.choice(ECHO_OPENERS)
    sayings = [f"Again: {words}.", f"Once more, {words}.", f'I said "{words}".']
    again = [rng.choice(sayings) for _ in range(rng.randint(1, 3))]
    return f"{opener}: {words}. " + " ".join(again)


def _ledger_doc(rng: random.Random) -> str:
    """Facts made up on the spot, then read back: who has how many of what, and where."""
    names = rng.sample(PEOPLE, rng.randint(2, 4))
    facts = [(name, rng.randint(1, 999), rng.choice(ITEMS), rng.choice(CITIES).name) for name in names]
    lines = [f"{name} has {count} {item} in {city}." for name, count, item, city in facts]
    rng.shuffle(facts)
    for name, count, item, city in facts[: rng.randint(1, len(facts))]:
        lines.append(rng.choice([
            f"How many {item} does {name} have? {name} has {count} {item}.",
            f"Where are the {item} of {name}? They are in {city}.",
            f"Who has {count} {item}? {name} does.",
            f'The note says: {{"name": "{name}", "count": {count}, "city": "{city}"}}',
        ]))
    return " ".join(lines)


_DOCS: list[tuple[Callable[[random.Random], str], float]] = [
    (_city_doc, 3), (_fruit_doc, 2), (_nature_doc, 2), (_arithmetic_doc, 3), (_units_doc, 1),
    (_formats_doc, 2), (_python_doc, 1), (_manners_doc, 0.5), (_story_doc, 0.5),
]
_COPY_DOCS: list[tuple[Callable[[random.Random], str], float]] = [(_echo_doc, 1), (_ledger_doc, 1)]


def world_corpus(seed: int, n_docs: int, copy_share: float = 0.0) -> Iterator[str]:
    """n_docs documents, the same for the same seed.

    copy_share: the copying documents' share of the draw (0 = none, and then the same documents as
    before they existed; 0.5 = as many as all the others together).
    """
    if not 0 <= copy_share < 1:
        raise ValueError(f"copy_share must be in [0, 1), got {copy_share}")
    rng = random.Random(f"tinyworld/corpus/{seed}")
    others = sum(weight for _, weight in _DOCS)
    copies = copy_share / (1 - copy_share) * others  # the copying documents' total weight
    copy_weights = sum(weight for _, weight in _COPY_DOCS)
    makers = [maker for maker, _ in _DOCS + _COPY_DOCS]
    weights = [weight for _, weight in _DOCS] + [copies * weight / copy_weights for _, weight in _COPY_DOCS]
    for _ in range(n_docs):
        yield rng.choices(makers, weights)[0](rng)
