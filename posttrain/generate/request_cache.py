"""A persistent cache of HTTP generation responses, keyed by the hash of the request.

The key is the sha256 of the canonical JSON of what decides the answer: the request body (model,
messages, tools, sampling parameters, seed) and nothing else. Headers, the API key and the server
address are never part of it, so a key is safe to log and the cache is valid across servers that
serve the same model name.

Storage is one SQLite file in write-ahead-log mode with a commit per entry: a process killed with
SIGKILL loses at most the entry it was writing, never one already committed, so a rerun after a
crash sends no request twice and a finished run sends none. One connection, guarded by a lock,
serves every thread; several processes may share the file (SQLite locks it).
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

CACHE_FILE = "requests.sqlite"


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no spaces, unicode kept, so equal requests hash equally."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(request: dict[str, Any]) -> str:
    """sha256 hex of the canonical request. Pass the body only: never headers or credentials."""
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


class RequestCache:
    """key -> response JSON, in `<directory>/requests.sqlite`. Thread safe; safe under kill -9."""

    def __init__(self, directory: Path | str):
        self.path = Path(directory) / CACHE_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # isolation_level=None: autocommit, so each put is its own committed transaction.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a killed process (the WAL is in the OS cache); FULL adds an
        # fsync per commit, needed only against power loss.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL)")

    def get(self, key: str) -> Any | None:
        """The cached response for `key`, or None."""
        with self._lock:
            row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, response: Any) -> None:
        """Store `response` under `key` (committed before this returns). The first write of a key wins."""
        text = canonical_json(response)
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO responses (key, response) VALUES (?, ?)", (key, text))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "RequestCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r})"
