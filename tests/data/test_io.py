"""Record IO: exact round trips in JSONL, Parquet and datasets dirs; quarantine with row numbers; shares."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from posttrain.data.io import (
    BadLine,
    ReadStats,
    RecordReader,
    data_format,
    iter_jsonl,
    load_records,
    read_records,
    write_records,
)
from posttrain.data.quarantine import QuarantineThresholdError, RowLog
from posttrain.data.records import Completion, Conversation, PreferencePair, Prompt

SAMPLES = Path(__file__).resolve().parents[2] / "posttrain" / "data" / "samples" / "conversations.jsonl"
USER = {"role": "user", "content": "Convert 3 km to m, é ok?"}
CALL = {"id": "c7", "type": "function", "function": {"name": "convert", "arguments": '{"km": 3, "to": "m"}'}}
TOOLS = [{"type": "function", "function": {"name": "convert", "description": "Units.", "parameters": {
    "type": "object", "properties": {"km": {"type": "number"}, "to": {"type": "string", "enum": ["m", "cm"]}}}}}]
TOOL_TURNS = [USER, {"role": "assistant", "content": None, "tool_calls": [CALL]},
              {"role": "tool", "tool_call_id": "c7", "name": "convert", "content": "3000"}]
ANSWER = {"role": "assistant", "content": "3 km = 3000 m."}


def sample_records() -> dict[type, list]:
    """Two rows per kind that differ in which optional and nested fields they fill."""
    prompt = {"messages": [USER], "family": "math", "tags": ["units"], "difficulty": 0.25,
              "check": {"answer": 3000, "unit": "m", "tolerance": None, "alternatives": [3000.0, "3e3"]}}
    return {
        Conversation: [
            Conversation.model_validate({"tools": TOOLS, "messages": [*TOOL_TURNS, ANSWER],
                                         "meta": {"stage": "synth", "round": 1, "seed": 3, "teacher": "t1"}}),
            Conversation.model_validate({"messages": [{"role": "system", "content": "Be terse."}, USER, ANSWER]}),
        ],
        Prompt: [Prompt.model_validate(prompt),
                 Prompt.model_validate({"tools": TOOLS, "messages": TOOL_TURNS, "meta": {"source": "hub/x"}})],
        Completion: [
            Completion.model_validate({"prompt": prompt, "responses": [
                {"index": 0, "messages": [ANSWER], "score": 1.0, "reason": "exact", "token_ids": [5, 6],
                 "logprobs": [-0.5, -0.25], "finish_reason": "stop"},
                {"index": 1, "messages": [{"role": "assistant", "content": "300 m"}], "score": 0.0}]}),
            Completion.model_validate({"prompt": {"messages": [USER]}}),
        ],
        PreferencePair: [
            PreferencePair.model_validate({"prompt": prompt, "chosen": [ANSWER],
                                           "rejected": [{"role": "assistant", "content": "300 m"}],
                                           "edited": [{"role": "assistant", "content": "3000 m."}],
                                           "chosen_reward": 1.5, "rejected_reward": -0.5, "strength": "better",
                                           "chosen_attributes": {"helpfulness": 4.0, "verbosity": 1.0}}),
            PreferencePair.model_validate({"prompt": {"tools": TOOLS, "messages": TOOL_TURNS}, "chosen": [ANSWER],
                                           "rejected": [{"role": "assistant", "content": "3 m"}]}),
        ],
    }


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet", "out_dataset"])
@pytest.mark.parametrize("record_cls", [Conversation, Prompt, Completion, PreferencePair])
def test_round_trip_is_exact(tmp_path, name, record_cls):
    records = sample_records()[record_cls]
    for record in records:
        record.meta.source = record.meta.source or "origin"  # so reading sets nothing new
    path = tmp_path / name
    assert write_records(path, records) == 2
    with RowLog(tmp_path / "q.jsonl") as quarantine:
        back, stats = read_records(path, record_cls, quarantine)
    assert (stats.rows, stats.ok, stats.quarantined) == (2, 2, 0)
    assert [r.model_dump() for r in back] == [r.model_dump() for r in records]
    assert [r.id for r in back] == [r.id for r in records]
    assert not (tmp_path / "q.jsonl").exists()  # nothing rejected, so no quarantine file
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temp files left behind


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.parquet", "empty_dataset"])
def test_empty_files_round_trip(tmp_path, name):
    assert write_records(tmp_path / name, []) == 0
    with RowLog(tmp_path / "q.jsonl") as quarantine:
        records, stats = read_records(tmp_path / name, Conversation, quarantine)
    assert records == [] and stats.rows == 0


def test_meta_source_is_set_only_where_missing(tmp_path):
    first, second = sample_records()[Prompt]  # the second carries meta.source "hub/x"
    path = tmp_path / "p.jsonl"
    write_records(path, [first, second])
    with RowLog(tmp_path / "q.jsonl") as quarantine:
        back, _ = read_records(path, Prompt, quarantine)
        named, _ = read_records(path, Prompt, quarantine, source="round-1/synth")
    assert [r.meta.source for r in back] == [str(path), "hub/x"]
    assert [r.meta.source for r in named] == ["round-1/synth", "hub/x"]
    assert back[0].id == first.id  # meta never changes the id


def test_overwrite_replaces_files_and_dataset_dirs(tmp_path):
    one, two = sample_records()[Conversation]
    for name in ("c.jsonl", "c.parquet", "c_ds"):
        write_records(tmp_path / name, [one, two])
        write_records(tmp_path / name, [two])
        with RowLog(tmp_path / "q.jsonl") as quarantine:
            back, _ = read_records(tmp_path / name, Conversation, quarantine)
        assert [r.id for r in back] == [two.id], name


def test_parquet_and_dataset_rows_are_quarantined_with_1_based_row_numbers(tmp_path):
    good = json.dumps([USER, ANSWER])  # a JSON-string column, as many hub datasets store messages
    table = pa.table({"messages": [good, "[{", good, json.dumps([{"role": "user", "content": "hi"}])]})
    pq.write_table(table, tmp_path / "raw.parquet")
    import datasets

    datasets.Dataset(table).save_to_disk(str(tmp_path / "raw_ds"))
    for path in (tmp_path / "raw.parquet", tmp_path / "raw_ds"):
        with RowLog(tmp_path / f"q_{path.stem}.jsonl") as quarantine:
            records, stats = read_records(path, Conversation, quarantine)
        assert (stats.rows, stats.ok, stats.quarantined) == (4, 2, 2)
        entries = [json.loads(line) for line in quarantine.path.read_text().splitlines()]
        assert [(e["line"], e["reason"], e["field"]) for e in entries] == [
            (2, "bad_json", "messages"), (4, "role_order", "messages.0")]
        assert entries[1]["detail"] == "messages.0: ends with user, expected assistant"


def test_foreign_parquet_with_native_nested_columns(tmp_path):
    """Hub chat datasets store messages as Arrow structs: missing keys come back as nulls, which is fine."""
    rows = [{"messages": [USER, ANSWER]}, {"messages": [{"role": "system", "content": "Hi."}, USER, ANSWER]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "hub.parquet")
    with RowLog(tmp_path / "q.jsonl") as quarantine:
        records, stats = read_records(tmp_path / "hub.parquet", Conversation, quarantine)
    assert stats.ok == 2
    assert records[1].messages[0].content == "Hi."


def test_load_records_reads_several_files_and_enforces_the_share(tmp_path):
    good = json.dumps({"messages": [USER, ANSWER]})
    (tmp_path / "a.jsonl").write_text("\n".join([good] * 9) + "\n")
    (tmp_path / "b.jsonl").write_text(good + "\n{oops\n")
    paths = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    with RowLog(tmp_path / "q.jsonl") as quarantine:
        records = load_records(paths, Conversation, quarantine, max_share=0.10, where="sft input")
        assert len(records) == 10  # 1 bad of 11 rows = 9.1%: under 10%
        with pytest.raises(QuarantineThresholdError, match=r"sft input: 1 of 11 input rows \(9.1%\)"):
            load_records(paths, Conversation, quarantine, max_share=0.05, where="sft input")
    entry = json.loads((tmp_path / "q.jsonl").read_text().splitlines()[0])
    assert (entry["file"], entry["line"], entry["reason"]) == (str(tmp_path / "b.jsonl"), 2, "bad_json")


def test_reader_accumulates_stats_across_files(tmp_path):
    good = json.dumps({"messages": [USER, ANSWER]})
    (tmp_path / "a.jsonl").write_text(f"{good}\n[]\n")
    (tmp_path / "b.jsonl").write_text(f"{good}\n")
    with RowLog(tmp_path / "q.jsonl") as quarantine:
        reader = RecordReader(Conversation, quarantine)
        ids = [r.id for path in ("a.jsonl", "b.jsonl") for r in reader.iter(tmp_path / path)]
    assert len(ids) == 2
    assert reader.stats == ReadStats(rows=3, ok=2, quarantined=1)
    total = ReadStats(rows=10, ok=10)
    total += reader.stats
    assert total == ReadStats(rows=13, ok=12, quarantined=1)


def test_iter_jsonl_numbers_lines_and_reports_bad_ones(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\n\n[2]\n{"b": "\xff"}\n{"c":\n')
    got = list(iter_jsonl(path))
    assert [line for line, _ in got] == [1, 3, 4, 5]  # the blank line 2 holds no row
    assert got[0][1] == {"a": 1} and got[1][1] == [2]
    assert isinstance(got[2][1], BadLine) and "not UTF-8" in got[2][1].detail
    assert got[3][1] == BadLine("bad_json", "invalid JSON: Expecting value (column 6)")


def test_paths_name_their_format_and_bad_paths_fail_clearly(tmp_path):
    assert [data_format(p) for p in ("a.jsonl", "a.parquet", tmp_path)] == ["jsonl", "parquet", "datasets"]
    with pytest.raises(ValueError, match=r"a\.csv: unknown data format '\.csv'"):
        data_format("a.csv")
    with RowLog(tmp_path / "q.jsonl") as quarantine:
        with pytest.raises(FileNotFoundError, match="missing.jsonl"):
            read_records(tmp_path / "missing.jsonl", Conversation, quarantine)
        (tmp_path / "plain_dir").mkdir()
        with pytest.raises(ValueError, match="not a datasets directory"):
            read_records(tmp_path / "plain_dir", Conversation, quarantine)


def test_shipped_samples_are_mostly_valid_with_one_row_per_bad_kind(tmp_path):
    with RowLog(tmp_path / "quarantine.jsonl") as quarantine:
        records = load_records(SAMPLES, Conversation, quarantine, max_share=0.05, where="samples")
    assert len(records) == 200
    assert dict(quarantine.counts_by_reason) == {"bad_json": 1, "not_an_object": 1, "missing_field": 1,
                                                 "role_order": 2, "invalid_value": 1, "bad_tool_arguments": 1,
                                                 "wrong_type": 1}
    assert any(r.tools for r in records) and any(m.role == "system" for r in records for m in r.messages)
    assert len({r.id for r in records}) > 150  # varied, not one row copied
