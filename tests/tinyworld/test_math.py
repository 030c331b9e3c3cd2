"""Math: worked-step references and the exact `Answer: N` final-line grader."""
from posttrain.tinyworld.families import math
from posttrain.tinyworld.family import answer, make_prompt


def _prompt(start, steps, result):
    check = {"answer": result, "start": start, "steps": steps, "name": "Mia", "item": "apples"}
    return make_prompt("math", [("user", "Mia has apples...")], tags=[], difficulty=0.4, check=check)


def test_reference_shows_one_operation_per_line():
    prompt = _prompt(7, [["add", 5], ["sub", 3]], 9)
    assert math.reference_solution(prompt)[0].content == "Mia starts with 7 apples.\n7 + 5 = 12.\n12 - 3 = 9.\nAnswer: 9"
    prompt = _prompt(4, [["bags", 3, 2], ["mul", 3], ["div", 5]], 6)
    assert math.reference_solution(prompt)[0].content == (
        "Mia starts with 4 apples.\n3 * 2 = 6.\n4 + 6 = 10.\n10 * 3 = 30.\n30 / 5 = 6.\nAnswer: 6")


def test_grader_checks_the_final_line_exactly():
    prompt = _prompt(7, [["add", 5], ["sub", 3]], 9)
    assert math.grade(prompt, answer("7 + 5 = 12.\n12 - 3 = 9.\nAnswer: 9\n")).score == 1.0
    assert math.grade(prompt, answer("Answer: 9")).score == 1.0
    wrong = math.grade(prompt, answer("7 + 5 = 12.\nAnswer: 8"))
    assert (wrong.score, wrong.reason) == (0.0, "expected 'Answer: 9', got 'Answer: 8'")
    assert math.grade(prompt, answer("Answer: 9\nI hope that helps.")).score == 0.0  # not the last line
    assert math.grade(prompt, answer("The answer is 9.")).score == 0.0
    assert math.grade(prompt, answer("Answer: 9 apples")).score == 0.0
    assert math.grade(prompt, []).reason == "expected 'Answer: 9', got ''"


def test_generated_problem_reads_as_a_story():
    prompt = math.generate_prompts("train", 1, seed=3)[0]
    text = prompt.messages[0].content
    assert text.startswith(f"{prompt.check['name']} has {prompt.check['start']} {prompt.check['item']}.")
    assert text.endswith(f"How many {prompt.check['item']} does {prompt.check['name']} have now?")


def test_eval_is_mostly_three_steps_train_mostly_two():
    def share_three(split):
        prompts = math.generate_prompts(split, 200, seed=0)
        return sum("steps=3" in p.tags for p in prompts) / len(prompts)

    assert share_three("train") < 0.35
    assert share_three("eval") > 0.6
