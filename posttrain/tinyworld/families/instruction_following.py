"""Instruction following: a short request plus 1-3 verifiable constraints (IFEval's idea).

Also "persist" prompts: a rule given in turn 1 ("From now on ...") must hold in the turn-2 answer.
Score = fraction of constraints satisfied (a graded RL signal); the reason lists each constraint as
ok/FAILED, and `Grade.passed` means all of them held. Train uses single constraints and a fixed set
of pairs; eval uses the held-out pairs and triples (combinations of parts seen separately in
train), larger counts and held-out end phrases and topics.
"""
from __future__ import annotations

import itertools
import random

from posttrain.data.records import Message, Prompt
from posttrain.judge.grader import Grade, final_answer, grade_checks
from posttrain.tinyworld.constraints import JSON_KEYS, Constraint, check_all, compatible, describe, render
from posttrain.tinyworld.facts import Split, topic_sentences, topics
from posttrain.tinyworld.family import Family, answer, distinct_prompts, family_rng, make_prompt

NAME = "instruction_following"
IF_TYPES = ("upper", "lower", "words", "bullets", "paragraphs", "ends_with", "json", "no_commas", "quotes")
REQUESTS = ("Describe {topic}.", "Tell me about {topic}.", "Write about {topic}.")
END_PHRASES = {"train": ("Thank you.", "That is all.", "Have a nice day."),
               "eval": ("See you soon.", "Any questions?")}

_PAIRS = [pair for pair in itertools.combinations(IF_TYPES, 2) if compatible(list(pair))]
EVAL_PAIRS = _PAIRS[::3]  # every third compatible pair is never shown in train
TRAIN_PAIRS = [pair for pair in _PAIRS if pair not in EVAL_PAIRS]
TRIPLES = [t for t in itertools.combinations(IF_TYPES, 3) if compatible(list(t))]


def make_constraint(kind: str, split: Split, rng: random.Random) -> Constraint:
    """A constraint of this type with parameters from the split's range."""
    train = split == "train"
    if kind == "words":
        return {"type": kind, "n": rng.randint(4, 10) if train else rng.randint(11, 14)}
    if kind == "bullets":
        return {"type": kind, "n": rng.randint(2, 4) if train else 5}
    if kind == "paragraphs":
        return {"type": kind, "n": rng.randint(2, 3) if train else 4}
    if kind == "ends_with":
        return {"type": kind, "phrase": rng.choice(END_PHRASES[split])}
    if kind == "json":
        return {"type": kind, "keys": rng.sample(JSON_KEYS, 2 if train else 3)}
    return {"type": kind}


def _types_for(split: Split, rng: random.Random) -> tuple[str, ...]:
    if split == "train":
        return (rng.choice(IF_TYPES),) if rng.random() < 0.4 else rng.choice(TRAIN_PAIRS)
    return rng.choice(EVAL_PAIRS) if rng.random() < 0.6 else rng.choice(TRIPLES)


def _draw(split: Split):
    def draw(rng: random.Random) -> Prompt:
        constraints = [make_constraint(kind, split, rng) for kind in _types_for(split, rng)]
        rules = " ".join(describe(c) for c in constraints)
        topic = rng.choice(topics(split))
        request = rng.choice(REQUESTS).format(topic=topic)
        kinds = [c["type"] for c in constraints]
        tags = [f"constraints={len(constraints)}"] + kinds
        check = {"constraints": constraints, "topic": topic}
        if rng.random() < 0.2:  # the rule is given once and must persist into the next turn
            first_topic = rng.choice([t for t in topics(split) if t != topic])
            first_request = rng.choice(REQUESTS).format(topic=first_topic)
            first_answer = render(constraints, list(topic_sentences(first_topic)), first_topic)
            messages = [("user", f"From now on, follow this rule in every answer: {rules} {first_request}"),
                        ("assistant", first_answer), ("user", request)]
            tags.append("persist")
        else:
            messages = [("user", f"{request} {rules}")]
        return make_prompt(NAME, messages, tags=tags, difficulty=len(constraints) / 3, check=check)
    return draw


def generate_prompts(split: Split, n: int, seed: int) -> list[Prompt]:
    """n distinct constrained requests of the split."""
    return distinct_prompts(_draw(split), n, family_rng(NAME, split, seed))


def reference_solution(prompt: Prompt) -> list[Message]:
    """Sentences about the topic, shaped to satisfy every constraint."""
    check = prompt.check or {}
    return answer(render(check["constraints"], list(topic_sentences(check["topic"])), check["topic"]))


def grade(prompt: Prompt, response: list[Message]) -> Grade:
    """Fraction of constraints the final answer satisfies; each listed as ok/FAILED."""
    text = final_answer(response)
    if not text.strip():
        return Grade(0.0, "empty answer")
    return grade_checks(check_all((prompt.check or {})["constraints"], text))


def corrupt(prompt: Prompt, response: list[Message], rng: random.Random) -> list[Message]:
    """The reference with one constraint forgotten (the rest still honoured)."""
    check = prompt.check or {}
    constraints = list(check["constraints"])
    sentences = list(topic_sentences(check["topic"]))
    for dropped in rng.sample(constraints, len(constraints)):
        kept = [c for c in constraints if c is not dropped]
        candidate = answer(render(kept, sentences, check["topic"]))
        if not grade(prompt, candidate).passed:
            return candidate
    return answer("I don't know, sorry.")  # breaks every constraint type some way or another


FAMILY = Family(NAME, generate_prompts, reference_solution, grade, corrupt)
