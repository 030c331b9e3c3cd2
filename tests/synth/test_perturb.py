"""Minimal-edit pairs: each edit changes one thing or says it does not apply; the grader picks the pairs."""
import random

import pytest

from posttrain.data.records import Completion, FunctionCall, Message, Prompt, Response, ToolCall
from posttrain.judge.grader import Grade
from posttrain.synth.perturb import (EDITS, add_comma, drop_sentence, edited_messages, flip_case, move_number,
                                     perturbed_pairs, swap_answer, swap_word, toggle_bullets, toggle_quotes)

POOL = ["Figs grow in Tessin.", "The sea is deep."]


def words(text):
    return text.replace(",", "").split()


@pytest.mark.parametrize("seed", range(10))
def test_flip_case_changes_one_words_case_and_nothing_else(seed):
    text = "the cat sat On the mat"
    new = flip_case(text, random.Random(seed), POOL)
    changed = [(a, b) for a, b in zip(words(text), words(new)) if a != b]
    assert len(changed) == 1 and changed[0][0].lower() == changed[0][1].lower()
    assert flip_case("42 + 7", random.Random(seed), POOL) is None


@pytest.mark.parametrize("seed", range(10))
def test_add_comma_adds_exactly_one_comma_between_words(seed):
    new = add_comma("red green blue.", random.Random(seed), POOL)
    assert new in {"red, green blue.", "red green, blue."}
    assert add_comma("one.", random.Random(seed), POOL) is None


@pytest.mark.parametrize("seed", range(10))
def test_move_number_moves_one_number_by_a_listed_step(seed):
    new = move_number("3 + 4 = 7", random.Random(seed), POOL)
    changed = [(int(a), int(b)) for a, b in zip("3 + 4 = 7".split(), new.split()) if a != b]
    assert len(changed) == 1 and changed[0][1] - changed[0][0] in {-2, -1, 1, 2, 10}
    assert move_number("no digits", random.Random(seed), POOL) is None
    assert move_number("0", random.Random(1), POOL) in {None, "1", "2", "10"}  # never below zero


def test_drop_sentence_keeps_the_others_and_needs_two():
    rng = random.Random(0)
    assert drop_sentence("One. Two. Three.", rng, POOL) in {"Two. Three.", "One. Three.", "One. Two."}
    assert drop_sentence("- a\n- b", rng, POOL) in {"- a", "- b"}
    assert drop_sentence("Only one.", rng, POOL) is None


def test_swap_word_takes_a_donor_word_and_keeps_case():
    new = swap_word("THE SEA", random.Random(0), ["Figs grow"])
    assert new is not None and new.isupper() and new != "THE SEA"
    assert set(new.split()) - {"THE", "SEA"} <= {"FIGS", "GROW"}
    assert swap_word("a b", random.Random(0), POOL) is None  # no word of three letters


def test_toggles_and_answer_swap_by_hand():
    assert toggle_quotes('"hi there"', random.Random(0), POOL) == "hi there"
    assert toggle_quotes("hi there", random.Random(0), POOL) == '"hi there"'
    assert toggle_bullets("- a b\n- c d", random.Random(0), POOL) == "a b c d"
    assert toggle_bullets("A b. C d.", random.Random(0), POOL) == "- A b.\n- C d."
    assert swap_answer(POOL[0], random.Random(0), POOL) == POOL[1]
    assert swap_answer(POOL[0], random.Random(0), [POOL[0]]) is None


def test_edited_messages_keeps_the_tool_round_trip():
    call = ToolCall(id="c1", function=FunctionCall(name="calculator", arguments='{"expression": "2+2"}'))
    messages = [Message(role="assistant", tool_calls=[call]), Message(role="tool", content="4", tool_call_id="c1"),
                Message(role="assistant", content="The answer is 4.")]
    edited = edited_messages(messages, "The answer is 5.")
    assert edited[:2] == messages[:2] and edited[2].content == "The answer is 5."
    assert messages[2].content == "The answer is 4."  # the original is untouched


class LowerCaseGrader:
    """Passes an answer written all in lower case with no comma."""

    def grade(self, prompt, response):
        text = response[-1].content or ""
        ok = text == text.lower() and "," not in text
        return Grade(1.0 if ok else 0.0, "ok" if ok else "upper case or comma")


def completions():
    prompt = Prompt(messages=[Message(role="user", content="say it in lower case")], family="if")
    texts = ["Not lower.", "the river runs past the city.", "also fine here."]
    responses = [Response(index=i, messages=[Message(role="assistant", content=t)], score=None)
                 for i, t in enumerate(texts)]
    failing = Prompt(messages=[Message(role="user", content="again")], family="if")
    return [Completion(prompt=prompt, responses=responses, meta={"stage": "rs"}),
            Completion(prompt=failing, responses=[Response(index=0, messages=[Message(role="assistant", content="NO")])])]


def test_perturbed_pairs_pair_the_first_passing_answer_with_failing_edits_only():
    pairs = perturbed_pairs(completions(), LowerCaseGrader(), per_response=3, seed=0)
    # Only a case flip or a comma breaks "lower case, no comma" here: a swapped word keeps the case, quotes
    # and bullets keep it, there is one sentence to drop, no number, and no other passing answer to swap in.
    # The all-failing prompt has nothing to perturb.
    assert sorted(p.meta.edit for p in pairs) == ["add_comma", "flip_case"]
    grader = LowerCaseGrader()
    for pair in pairs:
        assert pair.chosen[0].content == "the river runs past the city."
        assert grader.grade(pair.prompt, pair.chosen).passed and not grader.grade(pair.prompt, pair.rejected).passed
        assert (pair.chosen_score, pair.rejected_score) == (1.0, 0.0)
        assert pair.meta.strategy == "perturbed" and pair.meta.edit in EDITS and pair.meta.gap == 1.0
        assert pair.meta.rejected_reason == "upper case or comma"
    assert len(perturbed_pairs(completions(), LowerCaseGrader(), per_response=1, seed=0)) == 1
    assert pairs == perturbed_pairs(completions(), LowerCaseGrader(), per_response=3, seed=0)


def test_repairs_pair_an_edited_failing_answer_above_it_and_balance_the_directions():
    prompt = Prompt(messages=[Message(role="user", content="say it in lower case")], family="if")
    texts = ["the cat.", "The cat."]  # passes; fails (one capital)
    completion = Completion(prompt=prompt, responses=[Response(index=i, messages=[Message(role="assistant", content=t)])
                                                      for i, t in enumerate(texts)])
    only_breaks = perturbed_pairs([completion], LowerCaseGrader(), per_response=8)
    assert sorted(p.meta.edit for p in only_breaks) == ["add_comma", "flip_case"]
    pairs = perturbed_pairs([completion], LowerCaseGrader(), per_response=8, repair=True)
    # The only repair is lower-casing "The"; a comma has no repair, so its break pair is cut too.
    assert sorted((p.meta.edit, p.meta.direction) for p in pairs) == [("flip_case", "break"), ("flip_case", "repair")]
    repaired = next(p for p in pairs if p.meta.direction == "repair")
    assert (repaired.chosen[0].content, repaired.rejected[0].content) == ("the cat.", "The cat.")
    assert (repaired.chosen_score, repaired.rejected_score) == (1.0, 0.0)
    assert repaired.meta.response_id == completion.responses[1].id


def test_perturbed_pairs_reject_unknown_edits():
    with pytest.raises(ValueError, match="unknown edit"):
        perturbed_pairs(completions(), LowerCaseGrader(), edits=["shout"])
