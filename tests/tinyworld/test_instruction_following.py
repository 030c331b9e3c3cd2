"""Instruction following: per-constraint grading, persistent rules, held-out combinations on eval."""
from posttrain.tinyworld.families import instruction_following as ifo
from posttrain.tinyworld.family import answer, make_prompt


def _prompt(constraints, topic="the sea"):
    return make_prompt(ifo.NAME, [("user", "Describe the sea.")], tags=[], difficulty=0.5,
                       check={"constraints": constraints, "topic": topic})


def test_reference_by_hand():
    prompt = _prompt([{"type": "upper"}, {"type": "words", "n": 5}])
    assert ifo.reference_solution(prompt)[0].content == "THE SEA IS BIG, BLUE."
    prompt = _prompt([{"type": "json", "keys": ["topic", "note"]}, {"type": "lower"}], topic="Miravel")
    assert ifo.reference_solution(prompt)[0].content == (
        '{"topic": "miravel", "note": "the weather in miravel is often sunny."}')


def test_score_is_fraction_satisfied_and_reason_names_failures():
    prompt = _prompt([{"type": "upper"}, {"type": "words", "n": 5}])
    assert ifo.grade(prompt, answer("THE SEA IS VERY WIDE.")).score == 1.0
    half = ifo.grade(prompt, answer("the sea is very wide."))
    assert (half.score, half.reason) == (0.5, "upper: FAILED; words=5: ok")
    assert ifo.grade(prompt, answer("The sea.")).score == 0.0
    assert ifo.grade(prompt, answer("   ")).reason == "empty answer"


def test_three_constraints_partial_credit():
    prompt = _prompt([{"type": "bullets", "n": 2}, {"type": "no_commas"}, {"type": "ends_with", "phrase": "Bye."}])
    assert ifo.grade(prompt, answer("- big blue sea\n- soft sand Bye.")).score == 1.0
    grade = ifo.grade(prompt, answer("- big, blue sea\n- soft sand\n- fish"))
    assert grade.score == 0.0
    assert grade.reason == "bullets=2: FAILED; no_commas: FAILED; ends_with='Bye.': FAILED"


def test_persistent_rule_holds_in_the_second_turn():
    prompts = [p for p in ifo.generate_prompts("train", 200, seed=1) if "persist" in p.tags]
    assert prompts
    prompt = prompts[0]
    first_user, first_answer, second_user = prompt.messages
    assert first_user.content.startswith("From now on, follow this rule in every answer:")
    assert ifo.grade(prompt, [first_answer]).passed  # the first answer already follows the rule
    assert not any(c["type"] in second_user.content for c in prompt.check["constraints"])
    assert ifo.grade(prompt, ifo.reference_solution(prompt)).passed


def test_eval_combinations_never_appear_in_train():
    def combos(split):
        return {tuple(sorted(c["type"] for c in p.check["constraints"])) for p in ifo.generate_prompts(split, 200, 0)}

    train, evaluation = combos("train"), combos("eval")
    assert not train & evaluation
    assert any(len(c) == 3 for c in evaluation) and all(len(c) <= 2 for c in train)
    parts_seen_in_train = {kind for combo in train for kind in combo}
    assert {kind for combo in evaluation for kind in combo} <= parts_seen_in_train
