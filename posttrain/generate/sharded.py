"""Resumable sampling: work cut into shards of fixed composition, each written atomically as its own file.

Prompts are cut by input order into shards of `shard_size`; shard i always holds the same prompts,
so each shard is decoded in the same batches on every attempt. A shard's file (`shard-00003.jsonl`)
is written with tmp + fsync + rename once the shard is done, and a shard whose file is present is
read back instead of generated. Together with a seed per (run seed, prompt id, sample index) a
stage killed mid-way and restarted ends with exactly the output of an uncut run.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from posttrain.data.io import write_records
from posttrain.data.progress import progress
from posttrain.data.records import Record

T = TypeVar("T")
R = TypeVar("R", bound=Record)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (run seed, prompt id, sample index...): stable across processes, unlike `hash()`."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_seed(run_seed: int, prompt_id: str, member: int = 0) -> int:
    """The seed of one prompt's samples from one model: 31 bits, which every server's `seed` field takes."""
    return derive_seed(run_seed, prompt_id, member) >> 32


def shard_path(shard_dir: Path, index: int) -> Path:
    return Path(shard_dir) / f"shard-{index:05d}.jsonl"


@dataclass
class ShardStats:
    """How a sharded run went: shards in all, read back from an earlier attempt, generated now."""

    shards: int = 0
    reused: int = 0
    generated: int = 0


def cut_shards(items: Sequence[T], shard_size: int) -> list[list[T]]:
    """Consecutive slices of `shard_size` items (the last may be shorter), in input order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [list(items[start:start + shard_size]) for start in range(0, len(items), shard_size)]


def run_sharded(items: Sequence[T], *, shard_size: int, shard_dir: Path | str,
                work: Callable[[list[T], int], list[R]], record_cls: type[R],
                key_of_item: Callable[[T], str], key_of_record: Callable[[R], str],
                keep_shard: Callable[[list[R]], bool] | None = None, desc: str = "shards") -> tuple[list[R], ShardStats]:
    """One output record per item, in input order; `work(shard_items, shard_index)` makes a shard's records.

    A shard file is reused only when its records' keys equal its items' keys, in order (a file from
    another input is regenerated). A shard for which `keep_shard(records)` is false (it holds failed
    requests, say) is used but not written, so the next attempt tries it again.
    """
    shard_dir = Path(shard_dir)
    shards = cut_shards(items, shard_size)
    stats = ShardStats(shards=len(shards))
    out: list[R] = []
    for index, shard in progress(list(enumerate(shards)), desc=desc):
        path = shard_path(shard_dir, index)
        wanted = [key_of_item(item) for item in shard]
        records = _read_shard(path, record_cls, wanted, key_of_record)
        if records is None:
            records = work(shard, index)
            got = [key_of_record(r) for r in records]
            if got != wanted:
                raise ValueError(f"shard {index}: work returned records for {got[:3]}..., expected {wanted[:3]}...")
            if keep_shard is None or keep_shard(records):
                write_records(path, records)
            stats.generated += 1
        else:
            stats.reused += 1
        out.extend(records)
    return out, stats


def _read_shard(path: Path, record_cls: type[R], wanted: list[str],
                key_of_record: Callable[[R], str]) -> list[R] | None:
    """The shard's records when its file is present, valid and for exactly these items; else None."""
    if not path.exists():
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            records = [record_cls.model_validate(json.loads(line)) for line in fh if line.strip()]
    except (ValueError, ValidationError):  # written atomically, so only a foreign file gets here
        return None
    return records if [key_of_record(r) for r in records] == wanted else None
