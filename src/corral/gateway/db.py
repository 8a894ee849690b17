"""The gateway's own SQLite file: uploaded and written files, and batches (the journal is apart).

Why SQLite: the metadata must survive a kill -9 as the journal does (WAL, synchronous=NORMAL), and
listing with cursors (``after=``) is an indexed query, not a scan of a folder.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL              -- JSON: the Batch record (batches.py)
);
"""


class StateDB:
    """One connection, used from the event loop's thread only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> sqlite3.Cursor:
        return self._db.execute(sql, tuple(params))

    def one(self, sql: str, params: Iterable[Any] = ()) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(sql, tuple(params)).fetchone()
        return row

    def all(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        return self._db.execute(sql, tuple(params)).fetchall()

    def close(self) -> None:
        self._db.close()


def page(db: StateDB, table: str, *, limit: int, after: str | None, where: str = "",
         params: Iterable[Any] = (), newest_first: bool = True) -> tuple[list[tuple[Any, ...]], bool]:
    """Rows of ``table`` for a cursor page (OpenAI's ``limit`` / ``after``), and whether more follow.

    ``table`` and ``where`` are this package's own constants, never client input."""
    clauses = [where] if where else []
    values = list(params)
    order = "DESC" if newest_first else "ASC"
    if after:
        found = db.one(f"SELECT seq FROM {table} WHERE id = ?", (after,))
        if found is not None:
            clauses.append("seq < ?" if newest_first else "seq > ?")
            values.append(found[0])
    sql = f"SELECT * FROM {table}"
    if clauses:
        sql += " WHERE " + " AND ".join(clauses)
    sql += f" ORDER BY seq {order} LIMIT ?"
    rows = db.all(sql, [*values, limit + 1])
    return rows[:limit], len(rows) > limit
