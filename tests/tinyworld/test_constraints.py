"""Each constraint type on hand-written passing and failing texts; render satisfies combinations."""
import itertools

import pytest

from posttrain.tinyworld.constraints import (
    TYPES, check_all, compatible, count_words, describe, label, render, satisfied,
)

CASES = [
    # (constraint, passing text, failing text)
    ({"type": "upper"}, "THE SEA IS BLUE.", "THE SEA is BLUE."),
    ({"type": "upper"}, "I LIKE 3 PLUMS!", "123 !!!"),  # no letters at all is not "upper case"
    ({"type": "lower"}, "the sea is blue.", "The sea is blue."),
    ({"type": "words", "n": 5}, "The sea is very blue.", "The sea is blue."),
    ({"type": "words", "n": 3}, "It's big, really.", "It is big really."),
    ({"type": "max_words", "n": 4}, "Plums grow in Miravel.", "Plums grow in Miravel today."),
    ({"type": "bullets", "n": 2}, "Fruit:\n- plums\n- figs", "- plums\n- figs\n- pears"),
    ({"type": "bullets", "n": 3}, "* one\n* two\n- three", "-one\n-two\n-three"),
    ({"type": "bullet_list"}, "- plums\n- figs", "Here:\n- plums\n- figs"),
    ({"type": "bullet_list"}, "- a\n\n- b\n- c", "- only one"),
    ({"type": "paragraphs", "n": 2}, "First part.\n\nSecond part.", "First part.\nSecond part."),
    ({"type": "paragraphs", "n": 3}, "A.\n\nB.\n  \nC.", "A.\n\nB."),
    ({"type": "ends_with", "phrase": "Thank you."}, "Nice sea. Thank you.", "Thank you. Nice sea."),
    ({"type": "starts_with", "phrase": "Sure!"}, "Sure! It is 5.", "It is 5. Sure!"),
    ({"type": "json", "keys": ["topic", "summary"]}, '{"topic": "sea", "summary": "Blue."}', '{"topic": "sea"}'),
    ({"type": "json", "keys": ["topic"]}, ' {"topic": 1} ', "topic: sea"),
    ({"type": "json", "keys": ["topic"]}, '{"topic": "x"}', '["topic"]'),
    ({"type": "no_commas"}, "Big blue and deep.", "Big, blue and deep."),
    ({"type": "quotes"}, '"The sea is blue."', 'The "sea" is blue.'),
]


@pytest.mark.parametrize("constraint, good, bad", CASES)
def test_each_constraint_on_hand_texts(constraint, good, bad):
    assert satisfied(constraint, good)
    assert not satisfied(constraint, bad)


def test_every_type_has_a_hand_case_and_an_instruction():
    assert {c["type"] for c, _, _ in CASES} == set(TYPES)
    assert describe({"type": "words", "n": 7}) == "Use exactly 7 words."
    assert describe({"type": "json", "keys": ["topic", "note"]}) == 'Answer in JSON with the keys "topic" and "note".'
    assert label({"type": "ends_with", "phrase": "Bye."}) == "ends_with='Bye.'"
    assert label({"type": "upper"}) == "upper"


def test_count_words_ignores_punctuation_and_bullets():
    assert count_words("- The sea, it's big!") == 4
    assert count_words('"12 plums."') == 2


def test_check_all_lists_each_constraint():
    result = check_all([{"type": "upper"}, {"type": "no_commas"}], "BIG, BLUE")
    assert result == [("upper", True), ("no_commas", False)]


def test_compatible():
    assert compatible(["upper", "words", "quotes"])
    assert not compatible(["upper", "lower"])
    assert not compatible(["json", "no_commas"])  # a two-key object needs a comma
    assert not compatible(["quotes", "quotes"])


SENTENCES = ["The sea is big, blue and deep.", "Waves roll onto the sand.", "Fish swim under the water.",
             "Boats sail far from the shore.", "The wind brings salt and spray."]


def _instance(kind):
    params = {"words": {"n": 6}, "max_words": {"n": 4}, "bullets": {"n": 3}, "paragraphs": {"n": 2},
              "ends_with": {"phrase": "That is all."}, "starts_with": {"phrase": "Sure!"},
              "json": {"keys": ["topic", "note"]}}
    return {"type": kind, **params.get(kind, {})}


def test_render_satisfies_every_compatible_pair():
    for pair in itertools.combinations(TYPES, 2):
        if compatible(list(pair)):
            constraints = [_instance(kind) for kind in pair]
            text = render(constraints, SENTENCES, "the sea")
            assert all(ok for _, ok in check_all(constraints, text)), (pair, text)


def test_render_by_hand():
    text = render([{"type": "words", "n": 6}, {"type": "no_commas"}, {"type": "upper"}], SENTENCES)
    assert text == "THE SEA IS BIG BLUE AND."
    assert render([{"type": "bullets", "n": 2}, {"type": "ends_with", "phrase": "Bye."}], SENTENCES) == (
        "- The sea is big, blue and deep.\n- Waves roll onto the sand. Bye.")
    with pytest.raises(ValueError, match="conflict"):
        render([{"type": "upper"}, {"type": "lower"}], SENTENCES)
