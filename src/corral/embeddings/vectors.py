"""Vectors kept in the job's SQLite file: one row per distinct text, float32 bytes, not JSON.

Why not the engine's ``results`` table: a batch request carries dozens of texts, and a re-run may cut
the corpus into different batches (a ``--limit``, a skipped row, a split after an error), so a
batch's key would rarely match again. Keyed by text, every vector ever computed is found again, and
identical texts anywhere in the corpus share one. Stored as raw little-endian float32 a 768-wide
vector costs 3 KB instead of ~15 KB of JSON, and reading it back is a memory copy.

The table lives in the same file as the journal (``<output>.corral.db``), on its own connection;
WAL mode lets both write.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    key TEXT PRIMARY KEY,        -- hash of (backend kind, model, options, text)
    status TEXT NOT NULL,        -- 'ok' or 'failed'
    dim INTEGER,
    vector BLOB,                 -- little-endian float32 * dim
    error TEXT,
    error_kind TEXT,
    server TEXT,
    finished_at REAL
);
"""
# Vectors of an earlier output file, by row id (--skip-existing); gone when the connection closes.
_PRIOR = "CREATE TEMP TABLE IF NOT EXISTS prior (id TEXT PRIMARY KEY, vector BLOB)"
_LOOKUP_CHUNK = 500


@dataclass(slots=True, frozen=True)
class Stored:
    """A text's row in the cache."""

    ok: bool
    vector: bytes | None
    dim: int | None
    error: str | None
    error_kind: str | None


class VectorCache:
    """Vectors by text key. ``path=None`` keeps them in memory (the Python API without a store)."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = str(path) if path is not None else ":memory:"
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"{path}: cannot create the store: its folder does not exist")
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            self._db.execute(_PRIOR)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path}: cannot open the store: {exc}") from None
        self._pending: list[tuple[Any, ...]] = []

    # -- writing ----------------------------------------------------------------------------------
    def put(self, key: str, vector: np.ndarray, server: str | None) -> None:
        """Queue one vector (float32, 1-D); it reaches disk at the next flush()."""
        self._pending.append((key, "ok", int(vector.shape[0]), vector.astype("<f4", copy=False).tobytes(),
                              None, None, server, time.time()))

    def put_failed(self, key: str, error: str, error_kind: str | None, server: str | None) -> None:
        self._pending.append((key, "failed", None, None, error, error_kind, server, time.time()))

    def flush(self) -> None:
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        try:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._pending = rows + self._pending
            raise UsageError(f"{self.path}: cannot write to the store: {exc}") from None

    # -- reading ----------------------------------------------------------------------------------
    def lookup(self, keys: Iterable[str]) -> dict[str, Stored]:
        """Stored rows for these keys (queued rows are flushed first, so they are found too)."""
        self.flush()
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Stored] = {}
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start:start + _LOOKUP_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            for key, status, dim, vector, error, kind in self._db.execute(
                f"SELECT key, status, dim, vector, error, error_kind FROM vectors WHERE key IN ({marks})",
                chunk,
            ):
                found[key] = Stored(status == "ok", vector, dim, error, kind)
        return found

    # -- an earlier output ------------------------------------------------------------------------
    def add_prior(self, rows: Iterable[tuple[str, bytes]]) -> int:
        """Remember the vectors of an existing output file by row id; returns how many."""
        before = self.count_prior()
        self._db.execute("BEGIN")
        self._db.executemany("INSERT OR REPLACE INTO prior VALUES (?, ?)", rows)
        self._db.execute("COMMIT")
        return self.count_prior() - before

    def count_prior(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM prior").fetchone()[0])

    def prior(self, ids: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(ids))
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start:start + _LOOKUP_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            found.update(self._db.execute(f"SELECT id, vector FROM prior WHERE id IN ({marks})", chunk))
        return found

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._db.close()

    def __enter__(self) -> "VectorCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
