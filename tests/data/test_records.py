"""Record schemas: content-hash ids, chat shape rules, OpenAI tool calls, quarantine threshold."""
from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from posttrain.data.io import describe_validation_error, read_records
from posttrain.data.quarantine import QuarantineThresholdError, RowLog, check_quarantine_share
from posttrain.data.records import Completion, Conversation, PreferencePair, Prompt, content_hash

SYSTEM = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "What is 2 + 3?"}
ANSWER = {"role": "assistant", "content": "5"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "calculator", "arguments": '{"expression": "2 + 3"}'}}
CALLING = {"role": "assistant", "content": None, "tool_calls": [CALL]}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "5"}
TOOL_DEF = {"type": "function", "function": {"name": "calculator", "description": "Arithmetic.",
                                             "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}}}}


def shape_error(row: dict, record_cls=Conversation) -> tuple[str, str, str]:
    """(field, reason, detail) of the error a row must raise."""
    with pytest.raises(ValidationError) as info:
        record_cls.model_validate(row)
    return describe_validation_error(info.value)


# ---------------------------------------------------------------------------------------------- ids


def test_id_is_the_content_hash_and_ignores_meta_and_key_order():
    plain = Conversation.model_validate({"messages": [USER, ANSWER]})
    with_meta = Conversation.model_validate({"meta": {"stage": "sft", "round": 2}, "messages": [USER, ANSWER]})
    reordered = Conversation.model_validate({"messages": [{"content": "What is 2 + 3?", "role": "user"},
                                                          {"content": "5", "role": "assistant"}]})
    assert plain.id == with_meta.id == reordered.id
    # The id is the hash of kind + content, by the documented recipe (None fields left out).
    assert plain.id == content_hash({"kind": "conversation", "messages": [USER, ANSWER]})
    assert len(plain.id) == 16
    other = Conversation.model_validate({"messages": [USER, {"role": "assistant", "content": "6"}]})
    assert other.id != plain.id


def test_given_id_that_differs_from_the_hash_is_kept_as_source_id():
    row = {"id": "hf-row-17", "messages": [USER, ANSWER]}
    record = Conversation.model_validate(row)
    assert record.id == Conversation.model_validate({"messages": [USER, ANSWER]}).id
    assert record.meta.source_id == "hf-row-17"
    # A row whose id already is its hash carries no source_id (so a written file reads back unchanged).
    again = Conversation.model_validate(record.model_dump(exclude={"meta"}))
    assert again.id == record.id and "source_id" not in again.meta.model_dump()


def test_response_ids_differ_by_sample_index_and_completion_id_follows_the_prompt():
    prompt = {"messages": [USER], "family": "math"}
    completion = Completion.model_validate(
        {"prompt": prompt, "responses": [{"index": 0, "messages": [ANSWER]}, {"index": 1, "messages": [ANSWER]}]})
    first, second = completion.responses
    assert first.id != second.id
    assert first.text == second.text == "5"
    prompt_id = Prompt.model_validate(prompt).id
    assert first.id == content_hash({"prompt": prompt_id, "index": 0, "messages": [ANSWER]})
    assert completion.id == content_hash({"kind": "completion", "prompt": prompt_id})


def test_kinds_hash_apart_even_with_the_same_messages():
    assert Prompt.model_validate({"messages": [USER]}).id != Conversation.model_validate(
        {"messages": [USER, ANSWER]}).id
    pair = PreferencePair.model_validate({"prompt": {"messages": [USER]}, "chosen": [ANSWER],
                                          "rejected": [{"role": "assistant", "content": "6"}]})
    swapped = PreferencePair.model_validate({"prompt": {"messages": [USER]}, "rejected": [ANSWER],
                                             "chosen": [{"role": "assistant", "content": "6"}]})
    assert pair.id != swapped.id


# ---------------------------------------------------------------------------------------------- shapes


def test_valid_shapes_pass():
    Conversation.model_validate({"messages": [SYSTEM, USER, ANSWER, {"role": "user", "content": "x2?"}, ANSWER]})
    Conversation.model_validate({"tools": [TOOL_DEF], "messages": [USER, CALLING, RESULT, ANSWER]})
    Prompt.model_validate({"messages": [SYSTEM, USER]})
    Prompt.model_validate({"messages": [USER, CALLING, RESULT]})  # the model continues after a tool result


@pytest.mark.parametrize(
    ("messages", "field", "detail_part"),
    [
        ([USER, SYSTEM, ANSWER], "messages.1", "system message only allowed first"),
        ([ANSWER], "messages.0", "assistant turn after nothing"),
        ([SYSTEM, ANSWER], "messages.1", "assistant turn after system"),
        ([USER, RESULT, ANSWER], "messages.1", "tool message without a pending tool call"),
        ([USER, CALLING], "messages.1", "1 tool call(s) never answered"),
        ([USER, CALLING, ANSWER], "messages.2", "await a tool message"),
        ([USER, CALLING, {**RESULT, "tool_call_id": "call_9"}, ANSWER], "messages.2", "answers no pending call"),
        # Consecutive user turns are invalid (documented in check_role_order): templates assume alternation.
        ([USER, USER, ANSWER], "messages.1", "user turn after user"),
        ([USER, ANSWER, ANSWER], "messages.2", "assistant turn after assistant"),
        ([USER], "messages.0", "ends with user, expected assistant"),
        ([], "messages", "no messages"),
    ],
)
def test_invalid_role_orders_are_rejected_with_the_position(messages, field, detail_part):
    got_field, reason, detail = shape_error({"messages": messages})
    assert (got_field, reason) == (field, "role_order")
    assert detail_part in detail


def test_missing_content_and_unknown_role_name_the_field():
    assert shape_error({"messages": [{"role": "user"}, ANSWER]})[:2] == ("messages.0.content", "missing_field")
    assert shape_error({"messages": [USER, {"role": "bot", "content": "5"}]})[:2] == ("messages.1.role", "invalid_value")
    assert shape_error({"messages": [USER, {"role": "assistant", "content": 5}]})[:2] == ("messages.1.content", "wrong_type")
    assert shape_error({})[:2] == ("messages", "missing_field")
    assert shape_error({"messages": [USER, ANSWER], "extra": 1})[:2] == ("extra", "unknown_field")


@pytest.mark.parametrize(
    ("arguments", "detail_part"),
    [("{expression: 1}", "not valid JSON"), ('"2 + 3"', "must be a JSON object"), ("[1, 2]", "must be a JSON object"),
     ({"expression": "2 + 3"}, "must be a JSON string, got an object")],
)
def test_tool_call_arguments_must_be_a_json_object_string(arguments, detail_part):
    call = {**CALL, "function": {"name": "calculator", "arguments": arguments}}
    field, reason, detail = shape_error({"messages": [USER, {**CALLING, "tool_calls": [call]}, RESULT, ANSWER]})
    assert (field, reason) == ("messages.1.tool_calls.0.function.arguments", "bad_tool_arguments")
    assert detail_part in detail


def test_preference_pair_errors_name_the_answer():
    prompt = {"messages": [USER]}
    field, reason, _ = shape_error({"prompt": prompt, "chosen": [USER, ANSWER], "rejected": [ANSWER]}, PreferencePair)
    assert (field, reason) == ("chosen.0", "role_order")
    field, reason, _ = shape_error({"prompt": prompt, "chosen": [ANSWER], "rejected": [CALLING]}, PreferencePair)
    assert (field, reason) == ("rejected.0", "role_order")  # an unanswered call at the end of `rejected`


def test_openai_tool_calls_round_trip():
    """An OpenAI chat-completions message list (content null beside tool_calls) survives a dump exactly."""
    row = {"tools": [TOOL_DEF], "messages": [SYSTEM, USER, CALLING, {**RESULT, "name": "calculator"}, ANSWER]}
    record = Conversation.model_validate(row)
    dumped = record.model_dump(mode="json", exclude={"id", "meta"})
    assert dumped["messages"][2] == {"role": "assistant", "content": None, "tool_calls": [CALL],
                                     "tool_call_id": None, "name": None}
    assert json.loads(dumped["messages"][2]["tool_calls"][0]["function"]["arguments"]) == {"expression": "2 + 3"}
    assert Conversation.model_validate(json.loads(record.model_dump_json())) == record


# ---------------------------------------------------------------------------------------------- quarantine


def test_quarantine_share_threshold():
    with pytest.raises(QuarantineThresholdError) as info:
        check_quarantine_share(1, 10, 0.05, "sft input")
    message = str(info.value)
    assert "sft input: 1 of 10 input rows (10.0%) were quarantined" in message
    assert "allowed 5.0%" in message and "quarantine.jsonl" in message
    check_quarantine_share(1, 10, 0.20, "sft input")  # passes
    check_quarantine_share(0, 0, 0.0, "empty input")  # nothing read: nothing to judge


BAD_ROWS = {  # one row per kind of malformation -> (reason, field)
    '{"messages": [': ("bad_json", None),
    '"just a string"': ("not_an_object", None),
    '{"msgs": []}': ("missing_field", "messages"),
    json.dumps({"messages": [ANSWER]}): ("role_order", "messages.0"),
    json.dumps({"messages": [USER, {"role": "robot", "content": "5"}]}): ("invalid_value", "messages.1.role"),
    json.dumps({"messages": [USER, {**CALLING, "tool_calls": [{**CALL, "function": {"name": "c", "arguments": "x"}}]},
                             RESULT, ANSWER]}): ("bad_tool_arguments", "messages.1.tool_calls.0.function.arguments"),
    json.dumps({"messages": [USER, {"role": "assistant", "content": ["5"]}]}): ("wrong_type", "messages.1.content"),
}


def test_each_bad_row_lands_in_quarantine_with_file_line_field_reason(tmp_path):
    good = json.dumps({"messages": [USER, ANSWER]})
    lines = [good] * 3 + list(BAD_ROWS) + [good] * 3
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with RowLog(tmp_path / "quarantine.jsonl") as quarantine:
        records, stats = read_records(data, Conversation, quarantine)
    assert (stats.rows, stats.ok, stats.quarantined) == (13, 6, 7)
    assert len(records) == 6
    entries = [json.loads(line) for line in (tmp_path / "quarantine.jsonl").read_text().splitlines()]
    assert [e["line"] for e in entries] == [4, 5, 6, 7, 8, 9, 10]
    assert all(e["file"] == str(data) and e["detail"] for e in entries)
    assert [(e["reason"], e.get("field")) for e in entries] == list(BAD_ROWS.values())
    assert dict(quarantine.counts_by_reason) == {reason: 1 for reason, _ in BAD_ROWS.values()}


def test_one_bad_row_in_ten_fails_a_five_percent_share_and_passes_twenty(tmp_path):
    data = tmp_path / "in.jsonl"
    data.write_text("\n".join([json.dumps({"messages": [USER, ANSWER]})] * 9 + ["{not json"]) + "\n")
    with RowLog(tmp_path / "quarantine.jsonl") as quarantine:
        _, stats = read_records(data, Conversation, quarantine)
    assert (stats.rows, stats.quarantined) == (10, 1)
    with pytest.raises(QuarantineThresholdError, match=r"1 of 10 input rows \(10.0%\)"):
        stats.check_share(0.05, "sft")
    stats.check_share(0.20, "sft")
