"""Vectors kept in the job's SQLite file: one row per distinct text, float32 bytes, not JSON.

Why not the engine's ``results`` table: a batch request carries dozens of texts, and a re-run may cut
the corpus into different batches (a ``--limit``, a skipped row, a split after an error), so a
batch's key would rarely match again. Keyed by text, every vector ever computed is found again, and
identical texts anywhere in the corpus share one. Stored as raw little-endian float32 a 768-wide
vector costs 3 KB instead of ~15 KB of JSON, and reading it back is a memory copy.

The table lives in the job's store (``<output>.corral.db``, or memory), on the store's own connection,
so it shares its lock and its one way of writing a transaction.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..store import Store

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
-- Vectors of an earlier output file, by row id (--skip-existing); gone when the connection closes.
CREATE TEMP TABLE IF NOT EXISTS prior (id TEXT PRIMARY KEY, vector BLOB);
"""
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
    """Vectors by text key, in ``store``'s file (in memory when the store is)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        store.add_schema(_SCHEMA)
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
            self.store.write_many("INSERT OR REPLACE INTO vectors VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        except Exception:
            self._pending = rows + self._pending
            raise

    # -- reading ----------------------------------------------------------------------------------
    def lookup(self, keys: Iterable[str]) -> dict[str, Stored]:
        """Stored rows for these keys (queued rows are flushed first, so they are found too)."""
        self.flush()
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Stored] = {}
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start:start + _LOOKUP_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            for key, status, dim, vector, error, kind in self.store.query(
                f"SELECT key, status, dim, vector, error, error_kind FROM vectors WHERE key IN ({marks})",
                chunk,
            ):
                found[key] = Stored(status == "ok", vector, dim, error, kind)
        return found

    # -- an earlier output ------------------------------------------------------------------------
    def add_prior(self, rows: Iterable[tuple[str, bytes]]) -> int:
        """Remember the vectors of an existing output file by row id; returns how many."""
        before = self.count_prior()
        self.store.write_many("INSERT OR REPLACE INTO prior VALUES (?, ?)", list(rows))
        return self.count_prior() - before

    def count_prior(self) -> int:
        return int(self.store.query("SELECT count(*) FROM prior")[0][0])

    def prior(self, ids: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(ids))
        found: dict[str, bytes] = {}
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start:start + _LOOKUP_CHUNK]
            marks = ", ".join("?" for _ in chunk)
            found.update(self.store.query(f"SELECT id, vector FROM prior WHERE id IN ({marks})", chunk))
        return found

    def __enter__(self) -> VectorCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.flush()  # the store, which owns the connection, closes it
