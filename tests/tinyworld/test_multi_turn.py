"""Multi-turn: the second turn revises the first answer; graded on constraints + kept content."""
from posttrain.tinyworld.families import multi_turn
from posttrain.tinyworld.family import answer, make_prompt

SENTENCES = ["Plums grow in Miravel, on the Sil river.", "They are purple and sweet."]


def _prompt(constraints, ask):
    check = {"constraints": constraints, "keep": "plums", "sentences": SENTENCES, "short": "Plums grow in Miravel."}
    messages = [("user", "What fruit grows in Miravel?"), ("assistant", " ".join(SENTENCES)), ("user", ask)]
    return make_prompt("multi_turn", messages, tags=[], difficulty=0.3, check=check)


def prompt_answer(prompt):
    return next(m for m in prompt.messages if m.role == "assistant")


def test_word_limit_revision():
    prompt = _prompt([{"type": "max_words", "n": 4}], "Now use at most 4 words.")
    assert multi_turn.reference_solution(prompt)[0].content == "Plums grow in Miravel."
    assert multi_turn.grade(prompt, answer("Miravel grows plums.")).score == 1.0
    too_long = multi_turn.grade(prompt, answer("Miravel grows many sweet plums."))
    assert (too_long.score, too_long.reason) == (0.5, "max_words=4: FAILED; keeps 'plums': ok")
    lost = multi_turn.grade(prompt, answer("They grow there."))
    assert (lost.score, lost.reason) == (0.5, "max_words=4: ok; keeps 'plums': FAILED")


def test_upper_case_and_bullet_revisions():
    upper = _prompt([{"type": "upper"}], "Now say it in upper case.")
    assert multi_turn.reference_solution(upper)[0].content == "PLUMS GROW IN MIRAVEL, ON THE SIL RIVER. THEY ARE PURPLE AND SWEET."
    assert multi_turn.grade(upper, answer("PLUMS GROW IN MIRAVEL.")).passed  # content kept, any case
    assert multi_turn.grade(upper, [prompt_answer(upper)]).score == 0.5  # the unrevised first answer
    bullets = _prompt([{"type": "bullet_list"}, {"type": "no_commas"}], "Now turn it into a bulleted list and say it without commas.")
    assert multi_turn.reference_solution(bullets)[0].content == (
        "- Plums grow in Miravel on the Sil river.\n- They are purple and sweet.")
    assert multi_turn.grade(bullets, answer("- Plums, from Miravel.")).score == 1 / 3


def test_generated_prompts_have_two_user_turns_and_eval_stacks_revisions():
    for prompt in multi_turn.generate_prompts("train", 50, seed=2):
        assert [m.role for m in prompt.messages] == ["user", "assistant", "user"]
        assert prompt.messages[2].content.startswith("Now ")
        assert len(prompt.check["constraints"]) == 1
    stacked = [p for p in multi_turn.generate_prompts("eval", 200, seed=2) if len(p.check["constraints"]) == 2]
    assert len(stacked) > 50
    assert " and " in stacked[0].messages[2].content
