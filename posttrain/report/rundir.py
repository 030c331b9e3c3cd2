"""Read a run directory: each stage's manifest and status, and the logged metric series."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class StageView:
    """One stage directory as the report sees it."""

    label: str  # "data" or "round-2/sft"
    path: Path
    status: str  # done | failed | running (cut off or under way)
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.manifest.get("key") or _read_text(self.path / "_KEY"))


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_stage_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "manifest.json").exists() or (path / "_KEY").exists())


def _view(label: str, path: Path) -> StageView:
    manifest = _read_json(path / "manifest.json")
    if (path / "_DONE").exists():
        status = "done"
    else:
        status = "failed" if manifest.get("status") == "failed" else "running"
    if not manifest:
        round_no = int(label.split("/")[0][len("round-"):]) if label.startswith("round-") else 0
        manifest = {"id": label.rsplit("/", 1)[-1], "round": round_no}
    return StageView(label=label, path=path, status=status, manifest=manifest)


def read_stages(run_dir: Path) -> list[StageView]:
    """Every stage directory of the run, in run order (stages without a manifest last)."""
    run_dir = Path(run_dir)
    if _is_stage_dir(run_dir):  # a standalone single-stage run lives in the run directory itself
        manifest = _read_json(run_dir / "manifest.json")
        return [_view(str(manifest.get("label") or run_dir.name), run_dir)]
    views = []
    for child in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if child.name.startswith("round-") and child.is_dir():
            views.extend(_view(f"{child.name}/{sub.name}", sub) for sub in sorted(child.iterdir()) if _is_stage_dir(sub))
        elif _is_stage_dir(child):
            views.append(_view(child.name, child))
    return sorted(views, key=lambda v: (v.manifest.get("index", math.inf), v.label))


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rows of metrics.jsonl; a torn last line (a killed run) is skipped."""
    rows = []
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def stage_series(rows: list[dict[str, Any]], view: StageView) -> dict[str, list[tuple[float, float]]]:
    """Numeric series a stage logged against `step`: name -> [(step, value)], sorted by step.

    Only rows of the stage's current artifact count (same key); a step logged twice (a resumed
    attempt repeats the steps after its last checkpoint) keeps its latest value.
    """
    stage_id = view.manifest.get("id")
    round_no = view.manifest.get("round", 0)
    key = view.key
    series: dict[str, dict[float, float]] = {}
    for row in rows:
        if row.get("stage") != stage_id or row.get("round", 0) != round_no or not _is_number(row.get("step")):
            continue
        if key and row.get("key") and not key.startswith(str(row["key"])):
            continue
        for name, value in row.items():
            if name not in ("step", "round", "time") and _is_number(value):
                series.setdefault(name, {})[float(row["step"])] = float(value)
    return {name: sorted(points.items()) for name, points in series.items()}
