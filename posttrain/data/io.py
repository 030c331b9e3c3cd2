"""Read and write records as JSONL, Parquet or a Hugging Face `datasets` directory, with quarantine.

Reading never crashes on a bad row: each malformed row goes to the quarantine log with its file,
line (1-based: the JSONL line, or the row's position in a Parquet/Arrow table, so row N is ds[N-1]),
the offending field (pydantic's error location joined with '.', e.g. `messages.1.role`), a stable
reason key and a readable detail. `ReadStats` counts rows read, kept and quarantined so a stage can
enforce its allowed quarantine share (`load_records` does it in one call).

Parquet and datasets files store scalar top-level fields as native columns and nested ones (messages,
tools, meta, prompt, responses, ...) as JSON strings. Why: free-form dicts (tool parameters, check
specs, meta) have no fixed Arrow schema, and Arrow structs inferred across rows union their keys and
fill the gaps with nulls, which would not round-trip exactly. On reading, a string found where the
record expects a list, dict or model is parsed as JSON, so other tools' JSON-string columns work too.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import types
import typing
from pathlib import Path
from typing import Any, Generic, Iterable, Iterator, TypeVar, Union

from pydantic import BaseModel, ValidationError

from posttrain.data.quarantine import RowLog, check_quarantine_share
from posttrain.data.records import Record

R = TypeVar("R", bound=Record)

_BATCH_ROWS = 1024  # rows per Arrow batch read: bounds memory on large files

# pydantic error type -> quarantine reason. Our own shape errors (records.py) already carry a reason
# as their type (role_order, bad_tool_arguments, missing_field, invalid_value) and pass through.
_REASON_OF_ERROR_TYPE = {
    "missing": "missing_field",
    "extra_forbidden": "unknown_field",
    "literal_error": "invalid_value",
    "enum": "invalid_value",
    "value_error": "invalid_value",
    "greater_than": "invalid_value",
    "less_than": "invalid_value",
}
_OWN_REASONS = {"role_order", "bad_tool_arguments", "missing_field", "invalid_value"}


@dataclasses.dataclass(frozen=True)
class BadLine:
    """A JSONL line that is not valid JSON (or not valid UTF-8)."""

    reason: str
    detail: str


@dataclasses.dataclass
class ReadStats:
    """Counts of one read: every row read is either ok or quarantined."""

    rows: int = 0
    ok: int = 0
    quarantined: int = 0

    def __iadd__(self, other: "ReadStats") -> "ReadStats":
        self.rows += other.rows
        self.ok += other.ok
        self.quarantined += other.quarantined
        return self

    def check_share(self, max_share: float, where: str) -> None:
        """Raise QuarantineThresholdError when more than `max_share` of the rows were quarantined."""
        check_quarantine_share(self.quarantined, self.rows, max_share, where)


class RecordReader(Generic[R]):
    """Reads rows of one record class from files; bad rows go to `quarantine`; `stats` counts all files."""

    def __init__(self, record_cls: type[R], quarantine: RowLog):
        self.record_cls = record_cls
        self.quarantine = quarantine
        self.stats = ReadStats()

    def iter(self, path: Path | str, *, source: str | None = None) -> Iterator[R]:
        """Yield the valid records of one file; `meta.source` is set to `source` (default: the path) where unset."""
        path = Path(path)
        source = source or str(path)
        for line, row in _iter_raw_rows(path):
            self.stats.rows += 1
            record = self._validate(path, line, row)
            if record is None:
                self.stats.quarantined += 1
                continue
            self.stats.ok += 1
            if record.meta.source is None:
                record.meta.source = source  # meta is not part of the id, so the id is unchanged
            yield record

    def _validate(self, path: Path, line: int, row: Any) -> R | None:
        """The record for one raw row, or None after logging why it is unusable."""
        if isinstance(row, BadLine):
            self.quarantine.add(row.reason, file=path, line=line, detail=row.detail)
            return None
        if not isinstance(row, dict):
            detail = f"row is a JSON {type(row).__name__}, expected an object"
            self.quarantine.add("not_an_object", file=path, line=line, row=row, detail=detail)
            return None
        row, bad_field = _decode_json_fields(row, self.record_cls)
        if bad_field is not None:
            detail = f"{bad_field}: string is not valid JSON"
            self.quarantine.add("bad_json", file=path, line=line, field=bad_field, row=row, detail=detail)
            return None
        try:
            return self.record_cls.model_validate(row)
        except ValidationError as err:
            field, reason, detail = describe_validation_error(err)
            self.quarantine.add(reason, file=path, line=line, field=field, row=row, detail=detail)
            return None


def read_records(
    path: Path | str, record_cls: type[R], quarantine: RowLog, *, source: str | None = None
) -> tuple[list[R], ReadStats]:
    """Read one JSONL/Parquet/datasets file: (valid records, counts); bad rows go to `quarantine`."""
    reader = RecordReader(record_cls, quarantine)
    records = list(reader.iter(path, source=source))
    return records, reader.stats


def load_records(
    paths: Path | str | Iterable[Path | str],
    record_cls: type[R],
    quarantine: RowLog,
    max_share: float,
    where: str,
) -> list[R]:
    """Read several files and raise QuarantineThresholdError when more than `max_share` of all rows were bad."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    reader = RecordReader(record_cls, quarantine)
    records = [record for path in paths for record in reader.iter(path)]
    reader.stats.check_share(max_share, where)
    return records


def describe_validation_error(err: ValidationError) -> tuple[str, str, str]:
    """(field, reason, detail) for a row's validation error; the first error names field and reason."""
    errors = err.errors(include_url=False)
    first = errors[0]
    kind = first["type"]
    own = kind in _OWN_REASONS
    ctx = (first.get("ctx") or {}) if own else {}
    loc = [str(part) for part in first["loc"]]
    if ctx.get("field"):
        loc.append(str(ctx["field"]))  # our shape errors name the field relative to the model that raised
    field = ".".join(loc) or "<row>"
    reason = kind if own else _REASON_OF_ERROR_TYPE.get(kind, "wrong_type")  # the rest: type/parse errors
    detail = f"{field}: {ctx.get('detail') or first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more error(s))"
    return field, reason, detail


# ---------------------------------------------------------------------------------------------- reading


def iter_jsonl(path: Path | str) -> Iterator[tuple[int, Any]]:
    """Yield (1-based line number, parsed JSON value or BadLine) for every non-blank line."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue  # a blank line holds no row (a trailing newline at the end, typically)
            try:
                # without its newline: an unterminated string then reads as such, not as a control character
                yield line_no, json.loads(raw.rstrip(b"\r\n").decode("utf-8"))
            except UnicodeDecodeError as err:
                yield line_no, BadLine("bad_json", f"line is not UTF-8: {err.reason} at byte {err.start}")
            except json.JSONDecodeError as err:
                yield line_no, BadLine("bad_json", f"invalid JSON: {err.msg} (column {err.colno})")


def _iter_raw_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Rows of a file in the format its suffix (or directory) says."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    fmt = data_format(path)
    if fmt == "jsonl":
        return iter_jsonl(path)
    if fmt == "parquet":
        return _iter_parquet(path)
    return _iter_datasets_dir(path)


def data_format(path: Path | str) -> str:
    """'jsonl', 'parquet' or 'datasets' (a directory written by `Dataset.save_to_disk`), from the path."""
    path = Path(path)
    if path.is_dir() or path.suffix == "":
        return "datasets"
    if path.suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if path.suffix in (".parquet", ".pq"):
        return "parquet"
    raise ValueError(f"{path}: unknown data format {path.suffix!r}; use .jsonl, .parquet or a datasets directory")


def _iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise ValueError(f"{path}: not a readable Parquet file: {err}") from err
    line = 0
    for batch in parquet.iter_batches(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist():
            line += 1
            yield line, row


def _iter_datasets_dir(path: Path) -> Iterator[tuple[int, Any]]:
    if (path / "dataset_dict.json").exists():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise ValueError(f"{path}: a DatasetDict with splits {splits}; point at one split, e.g. {path / splits[0]}")
    if not (path / "state.json").exists():
        raise ValueError(f"{path}: not a datasets directory (no state.json); expected Dataset.save_to_disk output")
    import datasets

    table = datasets.load_from_disk(str(path)).with_format("arrow")
    line = 0
    for batch in table.iter(batch_size=_BATCH_ROWS):
        for row in batch.to_pylist():
            line += 1
            yield line, row


def _decode_json_fields(row: dict[str, Any], record_cls: type[BaseModel]) -> tuple[dict[str, Any], str | None]:
    """Parse top-level strings where the record expects a list/dict/model; (row, first field that failed)."""
    decoded = dict(row)
    for name, value in row.items():
        field = record_cls.model_fields.get(name)
        if field is None or not isinstance(value, str) or _accepts_str(field.annotation):
            continue
        try:
            decoded[name] = json.loads(value)
        except json.JSONDecodeError:
            return row, name
    return decoded, None


def _accepts_str(annotation: Any) -> bool:
    """Whether a field of this type may hold a plain string (then its value is never JSON-decoded)."""
    if annotation is str or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        return any(_accepts_str(arg) for arg in typing.get_args(annotation))
    if origin is typing.Literal:
        return any(isinstance(arg, str) for arg in typing.get_args(annotation))
    return False


# ---------------------------------------------------------------------------------------------- writing


def write_records(path: Path | str, records: Iterable[Record]) -> int:
    """Write records atomically (tmp + fsync + rename) in the format the path says; returns the count."""
    path = Path(path)
    rows = (record.model_dump(mode="json", exclude_none=True) for record in records)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = data_format(path)
    if fmt == "datasets":
        return _write_datasets_dir(path, list(rows))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        count = _write_jsonl(tmp, rows) if fmt == "jsonl" else _write_parquet(tmp, list(rows))
        _fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return count


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """Stream rows out one per line (nothing held in memory); returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
    return count


def _columns(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Column name -> values, nested values as JSON strings (see the module docstring for why)."""
    names: dict[str, None] = {}  # ordered union of keys: a field left out as None in one row is None there
    for row in rows:
        names.update(dict.fromkeys(row))
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        for name, values in columns.items():
            value = row.get(name)
            if isinstance(value, (dict, list)):
                value = json.dumps(value, ensure_ascii=False)
            values.append(value)
    return columns or {"id": []}  # an empty table still gets a column, so every reader can open it


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(_columns(rows)), path)
    return len(rows)


def _write_datasets_dir(path: Path, rows: list[dict[str, Any]]) -> int:
    """save_to_disk into a sibling temp dir, then swap it in (an existing dir is moved aside first)."""
    import datasets

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    bars_were_off = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # a progress bar per write would flood stage logs
    try:
        # with no rows save_to_disk would write no shard at all, and load_from_disk then fails
        shards = None if rows else 1
        datasets.Dataset.from_dict(_columns(rows)).save_to_disk(str(tmp), num_shards=shards)
        for child in tmp.iterdir():
            _fsync_file(child)
        if path.exists():
            os.replace(path, old)  # a directory cannot be renamed over a non-empty one
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return len(rows)
    finally:
        if not bars_were_off:
            datasets.utils.enable_progress_bars()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
