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
import zlib
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

# 2: runs.manifest, gpu_samples. 3: status (the live snapshot `corral status` reads). 4: `raw`
# compressed against the row's own columns, `request` kept for failed rows only (see _row), scans;
# rows of older journals keep their text and are read as they are.
SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    status TEXT NOT NULL,              -- 'ok' or 'failed'
    model TEXT,
    endpoint TEXT,
    request TEXT,                      -- failed rows: what was asked (compressed JSON, see pack_json)
    response TEXT,
    embeddings BLOB,                   -- JSON list of vectors, for embed requests
    raw TEXT,                          -- the server's answer as received (compressed, see _pack_raw)
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
CREATE TABLE IF NOT EXISTS scans (
    key TEXT PRIMARY KEY,              -- PromptFile.scan_key: the input's bytes and how it is read
    report BLOB                        -- ScanReport.to_json
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
_LOOKUP_SQL = f"SELECT {', '.join(_LOOKUP_COLUMNS)} FROM results WHERE key IN "
_LOOKUP_CHUNK = 500
_BLOCK_SQL = (f"SELECT rowid, {', '.join(_LOOKUP_COLUMNS)} FROM results WHERE rowid > ? AND rowid <= ? "
              "ORDER BY rowid LIMIT ?")
#: A stored row as `Store.find` returns it: the columns of _LOOKUP_COLUMNS, in that order.
StoredRow = tuple[Any, ...]
ROW_STATUS = _LOOKUP_COLUMNS.index("status")
ROW_MODEL = _LOOKUP_COLUMNS.index("model")


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

    def save_scan(self, key: str, report: bytes) -> None:
        """Keep an input's scan report, so the next run of the same bytes need not scan them."""
        self._db.execute("INSERT OR REPLACE INTO scans (key, report) VALUES (?, ?)", (key, report))

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

    def find(self, keys: list[str]) -> dict[str, StoredRow]:
        """Stored rows for these (distinct) keys, as tuples: the resume path's lookup, one query per
        500 keys. Rebuild an Outcome from one with `outcome_from_stored`."""
        found: dict[str, StoredRow] = {}
        execute = self._db.execute
        full = _LOOKUP_SQL + "(" + ", ".join("?" * _LOOKUP_CHUNK) + ")"
        with self._checked():  # one `with` per batch of keys, not per row
            for start in range(0, len(keys), _LOOKUP_CHUNK):
                chunk = keys[start:start + _LOOKUP_CHUNK]
                sql = full if len(chunk) == _LOOKUP_CHUNK else (
                    _LOOKUP_SQL + "(" + ", ".join("?" * len(chunk)) + ")")
                for row in execute(sql, chunk):
                    found[row[0]] = row
        return found

    def resume_reader(self) -> JournalCursor:
        """A `find` for a run that asks for its input's keys in order (see `JournalCursor`)."""
        return JournalCursor(self)

    def _rows_after(self, rowid: int, end: int, limit: int) -> list[tuple[Any, ...]]:
        with self._checked():
            return self._db.execute(_BLOCK_SQL, (rowid, end, limit)).fetchall()

    def lookup(self, keys: Iterable[str], *, include_failed: bool = True) -> dict[str, dict[str, Any]]:
        """Stored rows for these keys, as dicts by column name (one query per 500 keys)."""
        found: dict[str, dict[str, Any]] = {}
        for key, row in self.find(list(dict.fromkeys(keys))).items():
            if include_failed or row[1] == "ok":
                found[key] = dict(zip(_LOOKUP_COLUMNS, row))
        return found

    def outcome_from_row(self, request: Request, row: dict[str, Any]) -> Outcome:
        """Rebuild an Outcome for ``request`` from a row `lookup` returned (a cache hit)."""
        return outcome_from_stored(request, tuple(row[c] for c in _LOOKUP_COLUMNS))

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


def stored_scan(path: str | os.PathLike[str], key: str) -> bytes | None:
    """The scan report a journal holds for ``key``, read before the journal is opened for the job
    (so a bad input never creates one); None when there is no journal or no such report."""
    if not Path(path).is_file():
        return None
    try:
        db = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT report FROM scans WHERE key = ?", (key,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None  # an older journal without the table, or not a journal: scan
    return bytes(row[0]) if row else None


def outcome_from_stored(request: Request, row: StoredRow) -> Outcome:
    """Rebuild an Outcome for ``request`` from a row `Store.find` returned (a cache hit). The
    server's raw answer is decoded only if someone reads it (`_StoredReply`)."""
    (_, status, response, embeddings, raw, error, error_kind, status_code, attempts, server,
     prompt_eval_count, eval_count, eval_duration, prompt_eval_duration, total_duration,
     load_duration, done_reason, latency, started_at, finished_at, model) = row
    reply = None
    if status == "ok":
        reply = _StoredReply(
            response, orjson.loads(embeddings) if embeddings else None, prompt_eval_count,
            eval_count, eval_duration, prompt_eval_duration, total_duration, load_duration,
            done_reason, model, raw)
    return Outcome(request, reply, error, error_kind, status_code, attempts or 0, server, latency,
                   started_at, finished_at, True)


_RAW_SLOT: Any = Reply.__dict__["raw"]  # the slot under Reply.raw, which _StoredReply wraps


class _StoredReply(Reply):
    """A Reply from the journal whose raw answer stays packed until read: only vLLM batch output
    reads it, and unpacking it for every row would cost a resume more than the rest of the row."""

    __slots__ = ("_stored",)
    _stored: str | bytes | None

    def __init__(self, text: str | None = None, embeddings: list[list[float]] | None = None,
                 prompt_eval_count: int | None = None, eval_count: int | None = None,
                 eval_duration: int | None = None, prompt_eval_duration: int | None = None,
                 total_duration: int | None = None, load_duration: int | None = None,
                 done_reason: str | None = None, model: str | None = None,
                 raw: dict[str, Any] | str | bytes | None = None) -> None:
        """Reply's fields; ``raw`` packed as the journal holds it (or unpacked, for copies)."""
        self.text = text
        self.embeddings = embeddings
        self.prompt_eval_count = prompt_eval_count
        self.eval_count = eval_count
        self.eval_duration = eval_duration
        self.prompt_eval_duration = prompt_eval_duration
        self.total_duration = total_duration
        self.load_duration = load_duration
        self.done_reason = done_reason
        self.model = model
        packed = isinstance(raw, (str, bytes))
        self._stored = raw if packed else None  # type: ignore[assignment]
        _RAW_SLOT.__set__(self, None if packed else raw)

    @property  # type: ignore[override]
    def raw(self) -> dict[str, Any] | None:
        stored = self._stored
        if stored is not None:
            self._stored = None
            _RAW_SLOT.__set__(self, _unpack_raw(stored, self))
        return _RAW_SLOT.__get__(self)  # type: ignore[no-any-return]

    @raw.setter
    def raw(self, value: dict[str, Any] | None) -> None:
        self._stored = None
        _RAW_SLOT.__set__(self, value)


def pack_json(value: Any) -> bytes:
    """Compressed JSON for the journal's bulky columns (raw deflate: no header, no checksum)."""
    packer = zlib.compressobj(6, zlib.DEFLATED, -15)
    return packer.compress(orjson.dumps(value)) + packer.flush()


def unpack_json(stored: str | bytes | None) -> Any:
    """A JSON column as written by any version: text (schema 2 and before) or `pack_json` bytes."""
    if not stored:
        return None
    if isinstance(stored, str):
        return orjson.loads(stored)
    return orjson.loads(zlib.decompress(stored, -15))


def _as_stored(value: Any) -> bytes:
    """A column's value as JSON text, the same before it is written and after it is read back
    (SQLite keeps a whole float in an INTEGER column as an integer)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return orjson.dumps(value)


def _raw_dictionary(reply: Reply, model: str | None, ollama: bool) -> bytes:
    """The raw answer as the row's own columns (text, model, counters) would rebuild it, in Ollama's
    shape or OpenAI's: deflate's preset dictionary, so the journal stores little more than what the
    raw answer adds (timestamps, ids): 470 bytes of a typical Ollama answer pack into about 60.
    ``model`` is the row's model column. Should the columns ever read back otherwise, zlib's
    dictionary id and checksum say so, and the raw answer reads as missing, never as wrong."""
    text = _as_stored(reply.text if reply.text is None else str(reply.text))
    name, reason = _as_stored(model), _as_stored(reply.done_reason)
    prompt, completion = _as_stored(reply.prompt_eval_count), _as_stored(reply.eval_count)
    if ollama:
        return b"".join((
            b'{"model":', name, b',"created_at":"","message":{"role":"assistant","content":', text,
            b'},"done_reason":', reason, b',"done":true,"total_duration":', _as_stored(reply.total_duration),
            b',"load_duration":', _as_stored(reply.load_duration), b',"prompt_eval_count":', prompt,
            b',"prompt_eval_duration":', _as_stored(reply.prompt_eval_duration), b',"eval_count":',
            completion, b',"eval_duration":', _as_stored(reply.eval_duration), b"}"))[-32768:]
    return b"".join((
        b'{"id":"","object":"chat.completion","created":0,"model":', name,
        b',"choices":[{"index":0,"message":{"role":"assistant","content":', text, b'},"finish_reason":',
        reason, b'}],"usage":{"prompt_tokens":', prompt, b',"completion_tokens":', completion,
        b',"total_tokens":0}}'))[-32768:]


# The first byte of a packed raw answer: how to unpack it.
_OLLAMA, _OPENAI, _OLLAMA_CHAT = b"o", b"a", b"c"


def _ollama_chat(reply: Reply, created_at: Any, model: Any) -> dict[str, Any]:
    """An Ollama /api/chat answer as the row's columns give it, with its two values of its own."""
    return {"model": model, "created_at": created_at,
            "message": {"role": "assistant", "content": reply.text}, "done_reason": reply.done_reason,
            "done": True, "total_duration": reply.total_duration, "load_duration": reply.load_duration,
            "prompt_eval_count": reply.prompt_eval_count,
            "prompt_eval_duration": reply.prompt_eval_duration, "eval_count": reply.eval_count,
            "eval_duration": reply.eval_duration}


def _pack_raw(reply: Reply, model: str | None) -> bytes | None:
    """The common case, an Ollama chat answer holding nothing the columns lack but its timestamp
    and model name, keeps just those two (~45 bytes, checked byte for byte). Anything else is
    deflated against `_raw_dictionary`: level 1 and a window just large enough, since a deflate
    stream set up for 32 KB costs more per row than the rest of the journal's work."""
    raw = reply.raw
    if raw is None:
        return None
    data = orjson.dumps(raw)
    ollama = "created_at" in raw
    if ollama and data == orjson.dumps(_ollama_chat(reply, raw["created_at"], raw.get("model"))):
        return _OLLAMA_CHAT + orjson.dumps([raw["created_at"], raw.get("model")])
    dictionary = _raw_dictionary(reply, model, ollama)
    window = max(9, min(15, (len(dictionary) + len(data)).bit_length()))
    packer = zlib.compressobj(1, zlib.DEFLATED, window, 1, zlib.Z_DEFAULT_STRATEGY, dictionary)
    return (_OLLAMA if ollama else _OPENAI) + packer.compress(data) + packer.flush()


def _unpack_raw(stored: str | bytes, reply: Reply) -> dict[str, Any] | None:
    try:
        if isinstance(stored, str):  # a row of a schema 2 journal
            return orjson.loads(stored)  # type: ignore[no-any-return]
        if stored[:1] == _OLLAMA_CHAT:
            created_at, model = orjson.loads(stored[1:])
            return _ollama_chat(reply, created_at, model)
        dictionary = _raw_dictionary(reply, reply.model, stored[:1] == _OLLAMA)
        unpacker = zlib.decompressobj(15, zdict=dictionary)
        return orjson.loads(unpacker.decompress(stored[1:]) + unpacker.flush())  # type: ignore[no-any-return]
    except (zlib.error, orjson.JSONDecodeError):
        return None  # what only a faithful vLLM batch line would show; the row itself is intact


def _row(outcome: Outcome, run_id: int | None) -> tuple[Any, ...]:
    req = outcome.request
    reply = outcome.reply
    # What was asked is in the input, and its hash is the key: only failed rows keep it, for the
    # report's examples of each kind of error.
    asked = None if outcome.ok else pack_json({
        "messages": req.messages or None, "inputs": req.inputs, "options": req.options or None,
        "format": req.format, "extra": req.extra or None,
    })
    return (
        req.key, "ok" if outcome.ok else "failed", req.model, req.endpoint, asked,
        reply.text if reply else None,
        orjson.dumps(reply.embeddings, option=orjson.OPT_SERIALIZE_NUMPY)
        if reply and reply.embeddings is not None else None,
        _pack_raw(reply, req.model) if reply else None,
        outcome.error, outcome.error_kind, outcome.status_code, outcome.attempts, outcome.server,
        reply.prompt_eval_count if reply else None, reply.eval_count if reply else None,
        reply.eval_duration if reply else None, reply.prompt_eval_duration if reply else None,
        reply.total_duration if reply else None, reply.load_duration if reply else None,
        reply.done_reason if reply else None, outcome.latency, outcome.started_at,
        outcome.finished_at, run_id,
    )


class JournalCursor:
    """`Store.find` for a resume: the journal read in the order it was written, a block at a time.

    A run writes its results in about the order it read its input (out of order by at most its
    read-ahead window), so a re-run asking for the same keys in the same order finds them in the
    blocks just read: one sequential pass instead of a B-tree search per key, half the cost per
    row. Rows read but not asked for yet wait in a bounded buffer (the oldest dropped first); any
    key not met there is looked up directly, so the answer is always `Store.find`'s. Only rows
    written before the run began are read this way: the run's own results are for `find`."""

    BLOCK = 2048
    KEEP = 16_384

    def __init__(self, store: Store) -> None:
        self._store = store
        with store._checked():
            self._end = int(store._db.execute("SELECT COALESCE(MAX(rowid), 0) FROM results").fetchone()[0])
        self._last = 0
        self._ahead: dict[str, StoredRow] = {}

    def find(self, keys: list[str]) -> dict[str, StoredRow]:
        found: dict[str, StoredRow] = {}
        missing = self._take(keys, found)
        budget = 2 * len(keys) + self.BLOCK  # read on a little faster than rows are asked for
        while missing and self._last < self._end and budget > 0:
            block = self._store._rows_after(self._last, self._end, self.BLOCK)
            if not block:
                self._last = self._end
                break
            self._last = block[-1][0]
            budget -= len(block)
            ahead = self._ahead
            for row in block:
                ahead[row[1]] = row[1:]
            while len(ahead) > self.KEEP:
                del ahead[next(iter(ahead))]
            missing = self._take(missing, found)
        if missing:
            found.update(self._store.find(missing))
        return found

    def _take(self, keys: list[str], found: dict[str, StoredRow]) -> list[str]:
        """Move the buffered rows of ``keys`` into ``found``; the keys not buffered."""
        ahead, missing = self._ahead, []
        for key in keys:
            row = ahead.pop(key, None)
            if row is None:
                missing.append(key)
            else:
                found[key] = row
        return missing
