"""Copy what can still be read from a damaged journal into a new one.

A journal is a SQLite file; a disk error or a copy cut short can leave garbage in some of its pages,
and SQLite then refuses every query that walks through them ("database disk image is malformed").
The rows on the other pages are answers already paid for. Each table is read in small ranges of
rowids, and a range that fails is read again row by row, so only the rows on damaged pages are
lost; they are sent again by the next run, as if never answered.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError
from .store import Store

__all__ = ["SalvageReport", "salvage"]

#: Tables copied, in order; the new journal's schema comes from `Store`.
TABLES = ("results", "runs", "gpu_samples")
_RANGE = 256
#: Rowids probed past the last one read when the table's largest rowid cannot be read.
_PROBE_PAST = 100_000


@dataclass(slots=True)
class SalvageReport:
    """Rows copied and rows lost, per table."""

    copied: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        parts = [f"{t} {self.copied.get(t, 0)} copied" + (f", {self.lost[t]} unreadable" if self.lost.get(t) else "")
                 for t in TABLES]
        return "; ".join(parts)


def salvage(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> SalvageReport:
    """Copy every readable row of ``source``'s tables into a new journal at ``target``."""
    src, dst = Path(source), Path(target)
    if not src.is_file():
        raise UsageError(f"{src}: no such journal")
    if dst.exists():
        raise UsageError(f"{dst}: already exists; salvage writes a new journal, choose another name")
    if dst.resolve() == src.resolve():
        raise UsageError(f"{dst}: the new journal must be another file")
    try:
        old = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
        names = _columns(old)
    except sqlite3.DatabaseError as exc:
        raise UsageError(f"{src}: nothing can be read, not even its table list ({exc})") from None
    report = SalvageReport()
    with Store(dst) as new:
        for table in TABLES:
            columns = names.get(table)
            if not columns:
                continue
            rows, lost = _read_table(old, table, columns)
            wanted = [c for c in columns if c in _new_columns(new, table)]
            picked = [tuple(row[columns.index(c)] for c in wanted) for row in rows]
            marks = ", ".join("?" for _ in wanted)
            new.write_many(f"INSERT OR IGNORE INTO {table} ({', '.join(wanted)}) VALUES ({marks})", picked)
            report.copied[table], report.lost[table] = len(picked), lost
    old.close()
    return report


def _columns(db: sqlite3.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for table in TABLES:
        try:
            out[table] = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        except sqlite3.DatabaseError:
            out[table] = []
    return out


def _new_columns(store: Store, table: str) -> set[str]:
    return {row[1] for row in store.query(f"PRAGMA table_info({table})")}


def _read_table(db: sqlite3.Connection, table: str, columns: list[str]) -> tuple[list[tuple[Any, ...]], int]:
    """(readable rows, rowids that could not be read in ranges that failed)."""
    select = f"SELECT {', '.join(columns)} FROM {table} WHERE rowid BETWEEN ? AND ?"
    try:
        last = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
        exact = True
    except sqlite3.DatabaseError:
        last, exact = 0, False
    rows: list[tuple[Any, ...]] = []
    lost = 0
    start, seen_last = 1, 0
    while start <= last or (not exact and start <= seen_last + _PROBE_PAST):
        end = start + _RANGE - 1
        try:
            got = db.execute(select, (start, end)).fetchall()
            if got:
                seen_last = end
        except sqlite3.DatabaseError:
            got = []
            for rowid in range(start, end + 1):
                try:
                    got += db.execute(select, (rowid, rowid)).fetchall()
                except sqlite3.DatabaseError:
                    lost += 1
            seen_last = end
        rows += got
        start = end + 1
    return rows, lost
