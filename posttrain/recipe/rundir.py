"""The run directory: atomic files, the run lock, and each stage directory's lifecycle.

A stage directory is complete only when `_DONE` exists; `_DONE` is written last, after
`manifest.json` was renamed into place. `_KEY` (written when a stage starts) tells a cut-off attempt
with the same key (kept, so the stage resumes from its own checkpoint) from a stale one (wiped).
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import Any

DONE = "_DONE"
KEY = "_KEY"
MANIFEST = "manifest.json"
LOCK = ".lock"
# Run-level files that survive wiping a stage that lives in the run directory itself (standalone runs).
RUN_FILES = frozenset({LOCK, "metrics.jsonl", "recipe.yaml", "report.html"})


class RunDirError(RuntimeError):
    """The run directory cannot be used as it is."""


class RunLockedError(RunDirError):
    """Another posttrain process holds the run directory."""


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    write_atomic(path, json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    """The parsed JSON file, or None when it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class RunLock:
    """An exclusive, non-blocking `flock` on `<run>/.lock` holding the owner's pid.

    The OS drops the lock when the process dies (even by SIGKILL), so a stale lock never blocks.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK
        self._fh = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(self.path, "a+", encoding="utf-8")  # not "w": truncating would erase the holder's pid
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            pid = fh.read().strip() or "unknown"
            fh.close()
            raise RunLockedError(
                f"run directory {self.path.parent} is in use by another posttrain process (pid {pid}); "
                f"wait for it to finish or stop it, then run again"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def is_done(stage_dir: Path, key: str) -> bool:
    """A complete artifact with this cache key."""
    if not (stage_dir / DONE).exists():
        return False
    manifest = read_json(stage_dir / MANIFEST)
    return isinstance(manifest, dict) and manifest.get("key") == key


def prepare_stage_dir(stage_dir: Path, key: str, fresh: bool, keep: frozenset[str] = frozenset()) -> bool:
    """Make `stage_dir` ready for an attempt with `key`; returns True when a cut-off attempt is kept.

    A directory holding an attempt with the same key is kept (the stage resumes from it) unless
    `fresh`; any other attempt is wiped. A non-empty directory without `_KEY` was not made by
    posttrain and is never wiped. Names in `keep` are left alone (run files, when the stage directory
    is the run directory itself).
    """
    stage_dir.mkdir(parents=True, exist_ok=True)
    for leftover in stage_dir.glob(".*.tmp-*"):  # a write_atomic cut off by a kill
        leftover.unlink()
    entries = [p for p in stage_dir.iterdir() if p.name not in keep]
    key_file = stage_dir / KEY
    previous = key_file.read_text(encoding="utf-8").strip() if key_file.exists() else None
    if entries and previous is None:
        raise RunDirError(f"{stage_dir} is not empty and was not written by posttrain; refusing to overwrite it")
    resume = previous == key and not fresh
    if not resume:
        for entry in entries:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for name in (DONE, MANIFEST):  # an attempt under way is not complete
        (stage_dir / name).unlink(missing_ok=True)
    write_atomic(key_file, key + "\n")
    return resume and any(entry.name != KEY for entry in entries)
