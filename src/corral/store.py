"""The SQLite journal: every finished request, keyed by its stable hash.

Why a journal: runs last hours and servers (or the client) die. A result is worth keeping the moment
it arrives, so re-running the same command sends only what is missing. WAL mode with
``synchronous=NORMAL`` survives a killed process (committed pages live in the OS cache); commits are
grouped: results that arrive in the same event-loop turn share one transaction, so a busy run pays
for one commit per batch while a quiet one commits each result at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from .backends.base import Reply
from .errors import UsageError
from .locks import FileLock
from .requests import Request
from .results import Outcome

log = logging.getLogger("corral")

SCHEMA_VERSION = 3  # 2: runs.manifest, gpu_samples; 3: status

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,              -- 'ok' or 'failed'
    model TEXT,
    endpoint TEXT,
    request TEXT,                      -- JSON: messages/inputs, options, format (what was asked)
    response TEXT,
    embeddings BLOB,                   -- JSON list of vectors, for embed requests
    raw TEXT,                          -- the server's answer as received
    error TEXT,
    error_kind TEXT,
    status_code INTEGER,
    attempts INTEGER,
    server TEXT,
    prompt_eval_count INTEGER,
    eval_count INTEGER,
    eval_duration INTEGER,
    prompt_eval_duration INTEGER,
    total_duration INTEGER,
    load_duration INTEGER,
    done_reason TEXT,
    latency REAL,
    started_at REAL,
    finished_at REAL,
    run_id INTEGER
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    started_at REAL,
    finished_at REAL,
    argv TEXT,
    info TEXT,
    counts TEXT,
    manifest TEXT                      -- JSON: the run's manifest (see corral.manifest)
);
CREATE TABLE IF NOT EXISTS gpu_samples (
    run_id INTEGER,
    t REAL,                            -- wall-clock epoch seconds
    gpu INTEGER,
    name TEXT,
    utilization REAL,                  -- percent
    memory_used REAL,                  -- MiB
    memory_total REAL
);
CREATE TABLE IF NOT EXISTS status (
    run_id INTEGER PRIMARY KEY,
    updated_at REAL,                   -- wall-clock epoch seconds
    snapshot TEXT                      -- JSON: the running job's live figures (see corral.status)
);
"""

# Columns added after a table was first released: (table, column, type). A store written by an older
# corral gains them on open, so old journals still resume and can still be reported on.
_ADDED_COLUMNS = (("runs", "manifest", "TEXT"),)

_COLUMNS = (
    "key", "status", "model", "endpoint", "request", "response", "embeddings", "raw", "error",
    "error_kind", "status_code", "attempts", "server", "prompt_eval_count", "eval_count",
    "eval_duration", "prompt_eval_duration", "total_duration", "load_duration", "done_reason",
    "latency", "started_at", "finished_at", "run_id",
)
_INSERT = (
    f"INSERT OR REPLACE INTO results ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_LOOKUP_COLUMNS = (
    "key", "status", "response", "embeddings", "raw", "error", "error_kind", "status_code",
    "attempts", "server", "prompt_eval_count", "eval_count", "eval_duration",
    "prompt_eval_duration", "total_duration", "load_duration", "done_reason", "latency",
    "started_at", "finished_at", "model",
)


RECENT_FAILURES = 5


class Store:
    """A journal of results. ``path=None`` keeps it in memory (nothing survives the process).

    A store on disk is locked for as long as it is open (see `corral.locks`): a second corral
    process on the same journal is refused with a clear message instead of sending every row again
    next to the first. ``lock=False`` is for readers that only look at a finished journal.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, lock: bool = True) -> None:
        self.path = str(path) if path is not None else ":memory:"
        self._lock: FileLock | None = None
        where = self.path
        if path is not None:
            # The real file, links resolved: two runs given the journal by two names (a symlink,
            # a relative and an absolute path) must meet at one lock, not one lock per name.
            where = os.path.realpath(path)
            parent = Path(where).parent
            if not parent.is_dir():
                raise UsageError(f"{path}: cannot create the store: folder {parent} does not exist")
            if lock:
                self._lock = FileLock(f"{where}-lock", (
                    f"{path}: this journal is in use by another corral process; wait for it to "
                    "finish, or give this run its own output (-o) or --store"), remove=True)
        try:
            self._db = sqlite3.connect(where, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Checkpoint the WAL every ~40 MB rather than every 4 MB: checkpoints run inside COMMIT,
            # and a busy run commits often (measured: COMMIT 193 -> 102 us).
            self._db.execute("PRAGMA wal_autocheckpoint=10000")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if self._lock is not None:
                self._lock.release()
            if is_damage(exc):
                raise damaged(self.path, exc) from None
            raise UsageError(f"{self.path}: cannot open the store: {exc}") from None
        self._pending: list[tuple[Any, ...]] = []
        #: The latest failed rows, newest last: `corral status` shows them from another shell.
        self.recent_failures: deque[Outcome] = deque(maxlen=RECENT_FAILURES)
        self.run_id: int | None = None
        self.closed = False

    def _migrate(self) -> None:
        for table, column, kind in _ADDED_COLUMNS:
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                         (str(SCHEMA_VERSION),))

    # -- runs -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _checked(self) -> Iterator[None]:
        """SQLite's "database disk image is malformed" as one line naming the journal and the
        way on (a salvage, or a new --store), wherever a damaged page is met."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if is_damage(exc):
                raise damaged(self.path, exc) from None
            raise

    def start_run(self, argv: list[str] | None = None, info: dict[str, Any] | None = None) -> int:
        with self._checked():
            return self._start_run(argv, info)

    def _start_run(self, argv: list[str] | None, info: dict[str, Any] | None) -> int:
        cur = self._db.execute(
            "INSERT INTO runs (started_at, argv, info) VALUES (?, ?, ?)",
            (time.time(), orjson.dumps(argv or []).decode(), orjson.dumps(info or {}).decode()),
        )
        self.run_id = int(cur.lastrowid or 0)
        return self.run_id

    def finish_run(self, counts: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        self.flush()
        with self._checked():
            self._db.execute(
                "UPDATE runs SET finished_at = ?, counts = ? WHERE id = ?",
                (time.time(), orjson.dumps(counts).decode(), self.run_id),
            )

    def save_manifest(self, manifest: dict[str, Any], run_id: int) -> None:
        """Keep a run's manifest with the run, so the store alone says how its results were made."""
        with self._checked():
            self._db.execute("UPDATE runs SET manifest = ? WHERE id = ?",
                             (orjson.dumps(manifest).decode(), run_id))

    def record_gpu_samples(self, samples: Iterable[tuple[float, int, str, float | None, float | None,
                                                           float | None]]) -> None:
        """(t, gpu index, name, utilization %, memory used MiB, memory total MiB) for this run."""
        self._db.executemany(
            "INSERT INTO gpu_samples (run_id, t, gpu, name, utilization, memory_used, memory_total) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [(self.run_id, *sample) for sample in samples])

    def publish_status(self, snapshot: dict[str, Any]) -> None:
        """Replace this run's live snapshot (one small row, its own commit). Readers in other
        processes see it through WAL without blocking us; a failure here is logged, never raised:
        a status must not stop the run it describes."""
        if self.run_id is None or self.closed:
            return
        try:
            self._db.execute("INSERT OR REPLACE INTO status (run_id, updated_at, snapshot) VALUES (?, ?, ?)",
                             (self.run_id, time.time(), orjson.dumps(snapshot).decode()))
        except sqlite3.Error as exc:
            log.debug("could not publish the run's status: %s", exc)

    def add_schema(self, script: str) -> None:
        """Create tables that live beside the journal in its file (``IF NOT EXISTS`` statements)."""
        try:
            self._db.executescript(script)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"{self.path}: cannot open the store: {exc}") from None

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        """Read-only SQL for readers of a finished store (the report); pending results are flushed first."""
        self.flush()
        with self._checked():
            return self._db.execute(sql, tuple(params)).fetchall()

    # -- results --------------------------------------------------------------------------------
    def record(self, outcome: Outcome) -> None:
        """Queue one result; it reaches disk at the next flush()."""
        self._pending.append(_row(outcome, self.run_id))
        if not outcome.ok:
            self.recent_failures.append(outcome)

    def flush(self) -> int:
        """Write every queued result in one transaction; return how many."""
        if not self._pending:
            return 0
        rows, self._pending = self._pending, []
        try:
            self.write_many(_INSERT, rows)
        except UsageError:
            self._pending = rows + self._pending  # keep them for the next try
            raise
        return len(rows)

    def write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run ``sql`` for every row in one transaction, for this journal and for tables kept beside
        it (embedding vectors); a failure rolls back and says so in one line."""
        try:
            self._db.execute("BEGIN")
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                try:
                    self._db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolls back itself when it cannot; the error below says why
            if is_damage(exc):
                raise damaged(self.path, exc) from None
            hint = "" if "full" in str(exc) else " (is the disk full?)"
            raise UsageError(f"{self.path}: cannot write to the store: {exc}{hint}; the rows "
                             "journaled so far are kept, re-run to finish") from None

    def lookup(self, keys: Iterable[str], *, include_failed: bool = True) -> dict[str, dict[str, Any]]:
        """Stored rows for these keys (one query per 500 keys)."""
        wanted = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            sql = f"SELECT {', '.join(_LOOKUP_COLUMNS)} FROM results WHERE key IN ({marks})"
            with self._checked():
                rows = self._db.execute(sql, chunk).fetchall()
            for row in rows:
                record = dict(zip(_LOOKUP_COLUMNS, row))
                if include_failed or record["status"] == "ok":
                    found[record["key"]] = record
        return found

    def outcome_from_row(self, request: Request, row: dict[str, Any]) -> Outcome:
        """Rebuild an Outcome for ``request`` from a stored row (a cache hit)."""
        embeddings = orjson.loads(row["embeddings"]) if row["embeddings"] else None
        reply = None
        if row["status"] == "ok":
            reply = Reply(
                text=row["response"], embeddings=embeddings,
                prompt_eval_count=row["prompt_eval_count"], eval_count=row["eval_count"],
                eval_duration=row["eval_duration"], prompt_eval_duration=row["prompt_eval_duration"],
                total_duration=row["total_duration"], load_duration=row["load_duration"],
                done_reason=row["done_reason"], model=row["model"],
                raw=orjson.loads(row["raw"]) if row["raw"] else None,
            )
        return Outcome(
            request=request, reply=reply, error=row["error"], error_kind=row["error_kind"],
            status_code=row["status_code"], attempts=row["attempts"] or 0, server=row["server"],
            latency=row["latency"], started_at=row["started_at"], finished_at=row["finished_at"],
            cached=True,
        )

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._db.close()
            self.closed = True
            if self._lock is not None:
                self._lock.release()  # after the connection: its last writes are on disk

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JournalReader:
    """A journal opened read-only, for readers in another process while a run may be writing it
    (`corral status`, `corral report`).

    SQLite's ``mode=ro`` with WAL: a reader sees every committed row and never blocks the writer,
    and corral's own lock (``-lock``) is not taken, so a run can start or go on beside the reader.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        uri = "file:" + urllib.parse.quote(str(Path(path).resolve())) + "?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._db.execute("PRAGMA query_only=1")
            self.tables = {row[0] for row in self._db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self.path, exc) from None

    def has_column(self, table: str, column: str) -> bool:
        """A journal written by an older corral lacks later tables and columns (a reader cannot add
        them, as `Store` does on open): readers ask before they select."""
        return table in self.tables and any(
            row[1] == column for row in self._db.execute(f"PRAGMA table_info({table})"))

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise _unreadable(self.path, exc) from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> JournalReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_damage(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is broken (SQLITE_CORRUPT, SQLITE_NOTADB), as opposed to
    a full disk or a lock."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)


def _unreadable(path: str, exc: sqlite3.DatabaseError) -> UsageError:
    """A reader's one line: the damaged-journal line with its ways on, or what else went wrong."""
    return damaged(path, exc) if is_damage(exc) else UsageError(f"{path}: cannot read the store: {exc}")


def damaged(path: str, exc: sqlite3.Error) -> UsageError:
    """The one line for a damaged journal: which file, that it is damaged, and the ways on."""
    return UsageError(f"{path}: the journal is damaged ({exc}); copy its readable rows to a new "
                      f"journal with `corral salvage {path} NEW.db` and run with --store NEW.db, or "
                      "start afresh with another --store")


def _row(outcome: Outcome, run_id: int | None) -> tuple[Any, ...]:
    req = outcome.request
    reply = outcome.reply
    asked = orjson.dumps({
        "messages": req.messages or None, "inputs": req.inputs, "options": req.options or None,
        "format": req.format, "extra": req.extra or None,
    }).decode()
    return (
        req.key, "ok" if outcome.ok else "failed", req.model, req.endpoint, asked,
        reply.text if reply else None,
        orjson.dumps(reply.embeddings, option=orjson.OPT_SERIALIZE_NUMPY)
        if reply and reply.embeddings is not None else None,
        orjson.dumps(reply.raw).decode() if reply and reply.raw is not None else None,
        outcome.error, outcome.error_kind, outcome.status_code, outcome.attempts, outcome.server,
        reply.prompt_eval_count if reply else None, reply.eval_count if reply else None,
        reply.eval_duration if reply else None, reply.prompt_eval_duration if reply else None,
        reply.total_duration if reply else None, reply.load_duration if reply else None,
        reply.done_reason if reply else None, outcome.latency, outcome.started_at,
        outcome.finished_at, run_id,
    )
