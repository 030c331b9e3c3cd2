"""Math: 2-3 step arithmetic word problems; the answer ends with the line `Answer: N`.

Train is mostly 2 steps with small numbers and train names; eval is mostly 3 steps with larger
numbers and held-out names, so SFT leaves headroom for later stages.
"""
from __future__ import annotations

import random

from posttrain.data.records import Message, Prompt
from posttrain.judge.grader import Grade, final_answer
from posttrain.tinyworld.facts import ITEMS, Split, people
from posttrain.tinyworld.family import Family, answer, distinct_prompts, family_rng, make_prompt

NAME = "math"


def _draw_step(rng: random.Random, total: int, split: Split) -> list | None:
    """One story step applicable to the current total: [op, operand(s)...], or None to redraw."""
    high = 9 if split == "train" else 12
    kind = rng.choice(["add", "sub", "mul", "div", "bags"])
    if kind == "add":
        return ["add", rng.randint(2, high)]
    if kind == "sub" and total > 3:
        return ["sub", rng.randint(2, min(high, total - 1))]
    if kind == "mul" and total <= 30:
        return ["mul", rng.choice([2, 3])]
    if kind == "div":
        divisors = [k for k in (2, 3, 4, 5) if total % k == 0 and total > k]
        return ["div", rng.choice(divisors)] if divisors else None
    if kind == "bags":
        return ["bags", rng.randint(2, 4), rng.randint(2, high)]
    return None


def _apply(total: int, step: list) -> int:
    op = step[0]
    if op == "add":
        return total + step[1]
    if op == "sub":
        return total - step[1]
    if op == "mul":
        return total * step[1]
    if op == "div":
        return total // step[1]
    return total + step[1] * step[2]


def _sentence(step: list, name: str, item: str, other: str) -> str:
    op = step[0]
    if op == "add":
        return f"{name} finds {step[1]} more {item}."
    if op == "sub":
        return f"{name} gives {step[1]} {item} to {other}."
    if op == "mul":
        return f"Then the {item} {'double' if step[1] == 2 else 'triple'}."
    if op == "div":
        return f"{name} splits them into {step[1]} equal piles and keeps one pile."
    return f"{name} buys {step[1]} bags with {step[2]} {item} in each."


def _work_lines(total: int, step: list) -> list[str]:
    """The worked arithmetic for one step, one operation per line."""
    new = _apply(total, step)
    symbol = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
    if step[0] == "bags":
        product = step[1] * step[2]
        return [f"{step[1]} * {step[2]} = {product}.", f"{total} + {product} = {new}."]
    return [f"{total} {symbol[step[0]]} {step[1]} = {new}."]


def _draw(split: Split):
    def draw(rng: random.Random) -> Prompt:
        three_steps = rng.random() < (0.2 if split == "train" else 0.75)
        n_steps = 3 if three_steps else 2
        name, other = rng.sample(people(split), 2)
        item = rng.choice(ITEMS)
        start = rng.randint(2, 12) if split == "train" else rng.randint(5, 20)
        steps, total = [], start
        while len(steps) < n_steps:
            step = _draw_step(rng, total, split)
            if step is not None:
                steps.append(step)
                total = _apply(total, step)
        story = " ".join(_sentence(s, name, item, other) for s in steps)
        text = f"{name} has {start} {item}. {story} How many {item} does {name} have now?"
        ops = sum(2 if s[0] == "bags" else 1 for s in steps)
        check = {"answer": total, "start": start, "steps": steps, "name": name, "item": item}
        return make_prompt(NAME, [("user", text)], tags=[f"steps={n_steps}", f"ops={ops}"],
                           difficulty=min(1.0, ops / 5), check=check)
    return draw


def generate_prompts(split: Split, n: int, seed: int) -> list[Prompt]:
    """n distinct word problems of the split."""
    return distinct_prompts(_draw(split), n, family_rng(NAME, split, seed))


def reference_solution(prompt: Prompt) -> list[Message]:
    """Worked steps, one operation per line, then `Answer: N`."""
    check = prompt.check or {}
    total = check["start"]
    lines = [f"{check['name']} starts with {total} {check['item']}."]
    for step in check["steps"]:
        lines += _work_lines(total, step)
        total = _apply(total, step)
    lines.append(f"Answer: {total}")
    return answer("\n".join(lines))


def grade(prompt: Prompt, response: list[Message]) -> Grade:
    """1 when the last non-empty line is exactly `Answer: N`, else 0 with expected vs got."""
    expected = f"Answer: {(prompt.check or {})['answer']}"
    lines = [line.strip() for line in final_answer(response).splitlines() if line.strip()]
    got = lines[-1] if lines else ""
    if got == expected:
        return Grade(1.0, f"correct: {expected}")
    return Grade(0.0, f"expected {expected!r}, got {got!r}")


def corrupt(prompt: Prompt, response: list[Message], rng: random.Random) -> list[Message]:
    """A wrong final number, with the last worked line changed to match (a plausible slip)."""
    right = (prompt.check or {})["answer"]
    wrong = right + rng.choice([-2, -1, 1, 2, 10])
    lines = final_answer(response).splitlines()
    lines[-2] = lines[-2].rsplit("= ", 1)[0] + f"= {wrong}."
    lines[-1] = f"Answer: {wrong}"
    return answer("\n".join(lines))


FAMILY = Family(NAME, generate_prompts, reference_solution, grade, corrupt)
