"""Steerability: the system prompt's style must hold and the content must stay right."""
from posttrain.tinyworld.families import steerability
from posttrain.tinyworld.family import answer, make_prompt


def _prompt(constraints, system, expected="24"):
    check = {"constraints": constraints, "expected": expected,
             "sentences": ["3 * 8 = 24.", "The answer is 24."], "short": "The answer is 24."}
    return make_prompt("steerability", [("system", system), ("user", "What is 3 * 8?")], tags=[],
                       difficulty=0.3, check=check)


def test_caps_style_and_content():
    prompt = _prompt([{"type": "upper"}], "Answer in all caps.")
    assert steerability.reference_solution(prompt)[0].content == "3 * 8 = 24. THE ANSWER IS 24."
    assert steerability.grade(prompt, answer("IT IS 24.")).score == 1.0
    assert steerability.grade(prompt, answer("It is 24.")).reason == "upper: FAILED; content '24': ok"
    assert steerability.grade(prompt, answer("IT IS 25.")).reason == "upper: ok; content '24': FAILED"
    assert steerability.grade(prompt, answer("IT IS 124.")).score == 0.5  # whole numbers only


def test_prefix_and_word_limit_styles():
    sure = _prompt([{"type": "starts_with", "phrase": "Sure!"}], "Start every answer with 'Sure!'")
    assert steerability.reference_solution(sure)[0].content == "Sure! 3 * 8 = 24. The answer is 24."
    assert steerability.grade(sure, answer("24. Sure!")).score == 0.5
    short = _prompt([{"type": "max_words", "n": 4}, {"type": "lower"}], "Answer in at most 4 words. Answer in all lower case.")
    assert steerability.reference_solution(short)[0].content == "the answer is 24."
    assert steerability.grade(short, answer("the answer is twenty four")).score == 1 / 3


def test_fact_content_from_the_world():
    prompt = _prompt([{"type": "bullet_list"}], "Answer as a bulleted list.", expected="plums")
    assert steerability.grade(prompt, answer("- Plums grow in Miravel.\n- They are sweet.")).passed
    assert steerability.grade(prompt, answer("Plums grow in Miravel.")).score == 0.5


def test_eval_uses_held_out_style_question_pairs_or_two_styles():
    train = {(tuple(p.tags[:-1]), p.tags[-1]) for p in steerability.generate_prompts("train", 200, 0)}
    for prompt in steerability.generate_prompts("eval", 200, 0):
        styles, kind = tuple(prompt.tags[:-1]), prompt.tags[-1]
        assert len(styles) == 2 or (styles, kind) not in train
