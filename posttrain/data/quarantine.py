"""Rows that cannot be used, or that a stage drops by policy, are written out with a reason and counted.

Two logs per stage: `quarantine.jsonl` (malformed input: file, line, field, reason) and `dropped.jsonl`
(policy drops: too long, filtered). Nothing is ever dropped silently.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any


class QuarantineThresholdError(RuntimeError):
    """More than the allowed share of a stage's input was quarantined."""


class RowLog:
    """Append-only JSONL log of rejected rows, counted per reason.

    The file is opened lazily, so a stage that rejects nothing leaves no empty file behind.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.counts_by_reason: Counter[str] = Counter()
        self._fh = None

    @property
    def total(self) -> int:
        return sum(self.counts_by_reason.values())

    def add(
        self,
        reason: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        row: Any = None,
        detail: str | None = None,
    ) -> None:
        """Record one rejected row. `reason` is a short stable key (counted); `detail` is free text."""
        self.counts_by_reason[reason] += 1
        entry: dict[str, Any] = {"reason": reason}
        if file is not None:
            entry["file"] = str(file)
        if line is not None:
            entry["line"] = line
        if field is not None:
            entry["field"] = field
        if detail is not None:
            entry["detail"] = detail
        if row is not None:
            entry["row"] = row
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(entry, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RowLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_quarantine_share(quarantined: int, total: int, max_share: float, where: str) -> None:
    """Fail with a clear error when more than `max_share` of `total` input rows were quarantined."""
    if total > 0 and quarantined / total > max_share:
        raise QuarantineThresholdError(
            f"{where}: {quarantined} of {total} input rows ({quarantined / total:.1%}) were quarantined, "
            f"more than the allowed {max_share:.1%}; see quarantine.jsonl for file, line and reason "
            f"(raise max_quarantine_share to accept)"
        )
