"""The over-long policy, on hand-worked token lists."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from posttrain.data.lengths import TOO_LONG, LengthPolicy, apply_length_policy, fit_sequence

PROMPT = [11, 12, 13, 14, 15, 16]  # 6 tokens
RESPONSE = [21, 22, 23, 24]  # 4 tokens: 10 in all


def truncate(max_tokens: int) -> LengthPolicy:
    return LengthPolicy(max_tokens=max_tokens, on_overflow="truncate")


def test_rows_that_fit_are_returned_unchanged_under_both_modes():
    assert apply_length_policy(PROMPT, RESPONSE, LengthPolicy(max_tokens=10)) == (PROMPT, RESPONSE)
    assert apply_length_policy(PROMPT, RESPONSE, truncate(10)) == (PROMPT, RESPONSE)


def test_drop_is_the_default_and_drops_one_token_over():
    policy = LengthPolicy(max_tokens=9)
    assert policy.on_overflow == "drop"
    assert apply_length_policy(PROMPT, RESPONSE, policy) is None
    assert TOO_LONG == "too_long"


def test_truncate_cuts_the_prompt_from_the_left_first():
    # 10 tokens, limit 7: the 3 oldest prompt tokens go, the response stays whole.
    assert apply_length_policy(PROMPT, RESPONSE, truncate(7)) == ([14, 15, 16], RESPONSE)
    # Limit 4: the whole prompt goes (6), nothing from the response yet.
    assert apply_length_policy(PROMPT, RESPONSE, truncate(4)) == ([], RESPONSE)


def test_truncate_cuts_the_response_from_the_right_once_the_prompt_is_gone():
    # Limit 3: 6 prompt tokens and then 1 response token (its last) must go.
    assert apply_length_policy(PROMPT, RESPONSE, truncate(3)) == ([], [21, 22, 23])
    assert apply_length_policy(PROMPT, RESPONSE, truncate(1)) == ([], [21])


def test_inputs_are_not_modified_and_tuples_are_accepted():
    prompt = list(PROMPT)
    result = apply_length_policy(prompt, tuple(RESPONSE), truncate(7))
    assert prompt == PROMPT and result == ([14, 15, 16], RESPONSE)
    assert isinstance(result[1], list)


def test_fit_sequence_truncates_from_the_right():
    ids = [1, 2, 3, 4, 5, 6]
    mask = [0, 0, 1, 1, 0, 1]  # two assistant spans
    assert fit_sequence(ids, mask, truncate(6)) == (ids, mask)
    assert fit_sequence(ids, mask, truncate(4)) == ([1, 2, 3, 4], [0, 0, 1, 1])
    assert fit_sequence(ids, mask, LengthPolicy(max_tokens=5)) is None  # drop mode


def test_fit_sequence_drops_a_cut_that_leaves_nothing_to_learn():
    # The only trained tokens (mask 1) sit past the limit: the truncated row has no loss at all.
    assert fit_sequence([1, 2, 3, 4, 5], [0, 0, 0, 1, 1], truncate(3)) is None
    assert fit_sequence([1, 2, 3, 4, 5], [0, 0, 1, 1, 1], truncate(3)) == ([1, 2, 3], [0, 0, 1])


def test_fit_sequence_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="3 ids but 2 mask values"):
        fit_sequence([1, 2, 3], [1, 1], truncate(2))


def test_policy_config_is_checked_at_load_time():
    with pytest.raises(ValidationError, match="max_tokens"):
        LengthPolicy(max_tokens=0)
    with pytest.raises(ValidationError, match="on_overflow"):
        LengthPolicy(max_tokens=8, on_overflow="shorten")
    with pytest.raises(ValidationError, match="max_len"):
        LengthPolicy.model_validate({"max_tokens": 8, "max_len": 4})  # a typo fails, not ignored
