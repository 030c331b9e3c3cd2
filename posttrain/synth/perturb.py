"""Minimal-edit preference pairs: a response against a small edit of it that the grader judges otherwise.

Pairs of sampled responses differ in many ways at once, and a small reward model learns whatever
separates them most cheaply (fluency, length, topic) rather than the property the grader checks. A
pair whose two sides differ by one small edit (a word's case changed, a comma added, a number moved,
a sentence dropped, a word swapped, quotes or bullets toggled, or the whole answer swapped for one
given to another prompt) isolates one fault. The edits know nothing of the task: the grader decides
which edits break a passing answer (or repair a failing one), and only those pair. Self-Taught Evaluators
(Wang et al. 2024) build rejected answers from the chosen ones in the same spirit (by answering a
perturbed instruction); contrast sets (Gardner et al. 2020) evaluate with minimal edits.

Measured on the tiny world (README, `make study` section): edits that only break teach the edits
themselves (a bullet, a quote, a capital is "bad" whatever the prompt asks) and cost accuracy; so
`repair` also edits failing responses until the grader passes them, and balances the two directions
per family and edit kind, leaving the prompt as the only thing that tells them apart.

Every edit acts on the final assistant message's text, is a pure function of (text, rng, pool) and
returns None where it does not apply (no number to move, a single sentence to drop). `pool` holds
other passing answers of the same family (for word and answer swaps).
"""
from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence

from posttrain.data.records import Completion, Message, PreferencePair, Response
from posttrain.data.similarity import rouge_l_f
from posttrain.judge.grader import Grade, Grader

Edit = Callable[[str, random.Random, Sequence[str]], "str | None"]

_WORD = re.compile(r"[A-Za-z]+")
_NUMBER = re.compile(r"\d+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")


def _replace_span(text: str, span: tuple[int, int], new: str) -> str:
    return text[:span[0]] + new + text[span[1]:]


def flip_case(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """One word's case changed: a word with capitals lower-cased, a lower-case word capitalised."""
    words = list(_WORD.finditer(text))
    if not words:
        return None
    word = rng.choice(words)
    token = word.group()
    if any(c.isupper() for c in token):
        new = token.lower()
    else:
        new = token.upper() if rng.random() < 0.5 else token.capitalize()
    return _replace_span(text, word.span(), new)


def add_comma(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """A comma after a word that has no punctuation after it (not the last word)."""
    spots = [m.end() for m in _WORD.finditer(text) if m.end() < len(text) and text[m.end()] == " "]
    if not spots:
        return None
    at = rng.choice(spots)
    return text[:at] + "," + text[at:]


def move_number(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """One number changed by -2, -1, +1, +2 or +10 (never below zero)."""
    numbers = list(_NUMBER.finditer(text))
    if not numbers:
        return None
    number = rng.choice(numbers)
    value = int(number.group())
    new = max(0, value + rng.choice([-2, -1, 1, 2, 10]))
    return None if new == value else _replace_span(text, number.span(), str(new))


def drop_sentence(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """One sentence (or line) left out, when there are at least two."""
    parts = [p for p in _SENTENCE.split(text.strip()) if p]
    if len(parts) < 2:
        return None
    del parts[rng.randrange(len(parts))]
    joiner = "\n" if "\n" in text.strip() else " "
    return joiner.join(parts)


def swap_word(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """A word of three letters or more replaced by a different one from another answer, its case kept."""
    words = [m for m in _WORD.finditer(text) if len(m.group()) >= 3]
    donors = _donors(tuple(pool))
    if not words or not donors:
        return None
    word = rng.choice(words)
    donor = rng.choice(donors)
    token = word.group()
    if donor.lower() == token.lower():
        return None
    new = donor.upper() if token.isupper() else donor.capitalize() if token[0].isupper() else donor.lower()
    return _replace_span(text, word.span(), new)


@functools.lru_cache(maxsize=64)
def _donors(pool: tuple[str, ...]) -> list[str]:
    """The words of three letters or more in `pool`, sorted (one family's pool serves many responses)."""
    return sorted({w for other in pool for w in _WORD.findall(other) if len(w) >= 3})


def toggle_quotes(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """Surrounding double quotes removed, or added."""
    stripped = text.strip()
    if len(stripped) >= 2 and stripped[0] == stripped[-1] == '"':
        return stripped[1:-1]
    return f'"{stripped}"'


def toggle_bullets(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """A bulleted list joined into one paragraph, or a paragraph turned into one bullet per sentence."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines and all(line.lstrip().startswith(("- ", "* ")) for line in lines):
        return " ".join(line.lstrip()[2:] for line in lines)
    parts = [p for p in _SENTENCE.split(text.strip()) if p]
    return "\n".join(f"- {p}" for p in parts) if parts else None


def swap_answer(text: str, rng: random.Random, pool: Sequence[str]) -> str | None:
    """The whole answer replaced by an answer given to another prompt."""
    others = [other for other in pool if other != text]
    return rng.choice(others) if others else None


EDITS: dict[str, Edit] = {
    "flip_case": flip_case, "add_comma": add_comma, "move_number": move_number, "drop_sentence": drop_sentence,
    "swap_word": swap_word, "toggle_quotes": toggle_quotes, "toggle_bullets": toggle_bullets,
    "swap_answer": swap_answer,
}


def edited_messages(messages: list[Message], text: str) -> list[Message]:
    """`messages` with the last one's content replaced by `text` (tool round trips before it kept)."""
    last = messages[-1].model_copy(update={"content": text})
    return [*messages[:-1], last]


def perturbed_pairs(completions: list[Completion], grader: Grader, *, per_response: int = 1,
                    responses_per_prompt: int = 1, edits: Sequence[str] = tuple(EDITS), repair: bool = False,
                    tries: int = 10, pool_size: int = 64, seed: int = 0) -> list[PreferencePair]:
    """Minimal-edit pairs, in input order.

    Break: each prompt's first `responses_per_prompt` passing responses, each against up to
    `per_response` edits of it that the grader fails. Repair (`repair=True`): also its first
    `responses_per_prompt` failing responses, each paired below up to `per_response` edits of it that
    the grader passes (answer swaps excepted); then, per (family, edit kind), both directions are cut
    to the smaller count (a seeded choice). Edit kinds are tried in a seeded random order, one pair
    per kind and response at most, each kind applied up to `tries` times until the grader's verdict
    flips. The swaps draw from up to `pool_size` passing answers of the same family.
    """
    unknown = [name for name in edits if name not in EDITS]
    if unknown:
        raise ValueError(f"unknown edit(s) {unknown}; known: {', '.join(EDITS)}")
    graded = [(c, [(r, grader.grade(c.prompt, r.messages)) for r in c.responses
                   if r.messages and r.messages[-1].content]) for c in completions]
    pools: dict[str, list[str]] = {}
    for completion, responses in graded:
        first = [r.messages[-1].content for r, grade in responses if grade.passed][:1]
        pools.setdefault(completion.prompt.family or "", []).extend(first)
    for family, pool in pools.items():
        random.Random(f"{seed}:pool:{family}").shuffle(pool)
        del pool[pool_size:]
    frozen = {family: tuple(pool) for family, pool in pools.items()}  # hashable: swap_word caches its words
    broken, repaired = [], []
    repair_edits = [name for name in edits if name != "swap_answer"]
    for completion, responses in graded:
        pool = frozen[completion.prompt.family or ""]
        for response, grade in [(r, g) for r, g in responses if g.passed][:responses_per_prompt]:
            broken += _pairs_of(completion, response, grade, grader, pool, per_response, edits, tries, seed)
        if not repair:
            continue
        for response, grade in [(r, g) for r, g in responses if not g.passed][:responses_per_prompt]:
            repaired += _pairs_of(completion, response, grade, grader, pool, per_response, repair_edits, tries, seed)
    return _balanced(broken, repaired, seed) if repair else broken


def _balanced(broken: list[PreferencePair], repaired: list[PreferencePair], seed: int) -> list[PreferencePair]:
    """Per (family, edit kind), as many break pairs as repair pairs: the smaller count of the two.

    Unbalanced, an edit kind that pairs only as the rejected side (bullets, quotes, a capital) teaches
    "this edit is bad" whatever the prompt asks; paired as often on the chosen side, only the prompt can
    tell the two apart.
    """
    groups: dict[tuple[str, str], list[list[int]]] = {}
    for side, pairs in enumerate((broken, repaired)):
        for index, pair in enumerate(pairs):
            key = (pair.prompt.family or "", pair.meta.edit)  # type: ignore[attr-defined]
            groups.setdefault(key, [[], []])[side].append(index)
    keep: list[set[int]] = [set(), set()]
    for (family, edit), sides in sorted(groups.items()):
        cap = min(len(indices) for indices in sides)
        for side, indices in enumerate(sides):
            keep[side].update(random.Random(f"{seed}:balance:{family}:{edit}:{side}").sample(indices, cap))
    return [p for i, p in enumerate(broken) if i in keep[0]] + [p for i, p in enumerate(repaired) if i in keep[1]]


def _flipping_edit(completion: Completion, response: Response, text: str, grader: Grader, edit: Edit,
                   rng: random.Random, pool: Sequence[str], tries: int, passed: bool):
    """(text, messages, grade) of the first of up to `tries` applications of `edit` to `text` (the
    response's last message) whose verdict is not `passed`; or None."""
    for _ in range(tries):
        new_text = edit(text, rng, pool)
        if new_text is None:
            return None
        if new_text == text:
            continue
        edited = edited_messages(response.messages, new_text)
        grade = grader.grade(completion.prompt, edited)
        if grade.passed != passed:
            return new_text, edited, grade
    return None


def _pairs_of(completion: Completion, response: Response, grade: Grade, grader: Grader, pool: Sequence[str],
              per_response: int, edits: Sequence[str], tries: int, seed: int) -> list[PreferencePair]:
    """Pairs of `response` against up to `per_response` edits of it with the opposite verdict."""
    rng = random.Random(f"{seed}:perturb:{response.id}")
    text = response.messages[-1].content or ""
    pairs = []
    for name in rng.sample(list(edits), len(edits)):
        if len(pairs) == per_response:
            break
        flipped = _flipping_edit(completion, response, text, grader, EDITS[name], rng, pool, tries, grade.passed)
        if flipped is None:
            continue
        new_text, edited, new_grade = flipped
        (good, good_grade), (bad, bad_grade) = sorted([(response.messages, grade), (edited, new_grade)],
                                                      key=lambda side: not side[1].passed)
        pairs.append(PreferencePair(
            prompt=completion.prompt, chosen=good, rejected=bad, chosen_score=good_grade.score,
            rejected_score=bad_grade.score, strength="significantly_better",
            meta={**completion.meta.model_dump(exclude_none=True), "completion": completion.id,
                  "response_id": response.id, "strategy": "perturbed", "edit": name,
                  "direction": "break" if grade.passed else "repair", "gap": good_grade.score - bad_grade.score,
                  "rejected_reason": bad_grade.reason, "rouge_l": round(rouge_l_f(text, new_text), 4)},
        ))
    return pairs
