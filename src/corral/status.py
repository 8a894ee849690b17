"""A running job's live figures, published into its journal and read back from any shell.

Why the journal: it is already the one file a run and its readers share, SQLite's WAL lets another
process read committed rows without blocking the writer, and a snapshot there outlives the process
(the last one says how the run ended). The runner publishes one small row every few seconds
(`StatusPublisher`); `corral status` and `corral report` read it with `read_status`, never taking
corral's lock. The snapshot names the writing process (host, pid and its start time), so a reader
can tell a live run from one that was killed without a word.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .engine import Engine
    from .manifest import ManifestRecorder
    from .store import JournalReader, Store

log = logging.getLogger("corral")

SNAPSHOT_FORMAT = 1
DEFAULT_INTERVAL = 2.0
#: A running snapshot older than this many intervals comes from a process that stopped updating it.
STALE_INTERVALS = 5
#: The manifest's counts are refreshed every this many snapshots (a file write: less often).
MANIFEST_EVERY = 10
RUNNING = "running"

#: (done, total or None, a detail line): the progress display's counter, for jobs counting texts.
Counter = Callable[[], tuple[int, int | None, str]]


def publish_interval() -> float:
    """Seconds between snapshots: ``$CORRAL_STATUS_INTERVAL`` or 2 s (0 turns publishing off)."""
    try:
        return float(os.environ.get("CORRAL_STATUS_INTERVAL", DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat`` (clock ticks since boot), None when gone, a zombie, or on
    a system without /proc. With the pid it names one process: a pid alone may be reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


# -- the writer's side ----------------------------------------------------------------------------

def snapshot(engine: Engine, store: Store, state: str, started_at: float,
             counter: Counter | None = None) -> dict[str, Any]:
    """What a reader in another shell needs: counts, rate, ETA, each server's slots and rate, the
    latest failures, and who is writing."""
    s = engine.stats
    done, total = (counter()[:2] if counter is not None else (s.done, s.total))
    elapsed = max(s.elapsed, 1e-9)
    if counter is None:  # rows: the engine's own figures, the ETA weighted by estimated cost
        rate, eta = s.rate, s.eta_seconds()
    else:  # something else (texts): by that count
        rate = max(0, done - s.cached) / elapsed
        eta = (max(0, total - done) / rate) if total is not None and rate > 0 else None
    return {
        "format": SNAPSHOT_FORMAT, "run_id": store.run_id, "state": state,
        "host": socket.gethostname(), "pid": os.getpid(), "process_start": process_start_time(os.getpid()),
        "started_at": started_at, "updated_at": time.time(), "interval": publish_interval(),
        "total": total, "done": done, "ok": s.ok, "failed": s.failed, "cached": s.cached,
        "in_flight": s.in_flight, "sent": s.sent, "retries": s.retries,
        "rate": round(rate, 3), "eta_seconds": round(eta, 1) if eta is not None else None,
        "servers": [{"label": srv.label, "in_flight": srv.in_flight, "slots": srv.limit,
                     "queued_ahead": srv.queued_ahead,
                     "requests": srv.stats.requests, "ok": srv.stats.ok, "errors": srv.stats.errors,
                     "hedged": srv.stats.hedges, "cancelled": srv.stats.cancelled,
                     "rate": round(srv.stats.ok / elapsed, 3), "benched": srv.benched,
                     "removed": srv.removed,
                     "last_error": srv.last_error} for srv in engine.servers],
        "last_errors": [{"id": o.request.id, "line": o.request.meta.get("line"), "error": o.error,
                         "kind": o.error_kind, "server": o.server, "at": o.finished_at}
                        for o in reversed(store.recent_failures)],
    }


class StatusPublisher:
    """``async with StatusPublisher(engine, store):`` around a run publishes its snapshot every
    `publish_interval` seconds; `finish` publishes the last one with how the run ended. A store in
    memory, or a run without a run record, publishes nothing."""

    def __init__(self, engine: Engine, store: Store, counter: Counter | None = None,
                 manifest: ManifestRecorder | None = None) -> None:
        self.engine = engine
        self.store = store
        self.counter = counter
        self.manifest = manifest
        self.interval = publish_interval()
        self.enabled = store.path != ":memory:" and store.run_id is not None and self.interval > 0
        self.started_at = time.time()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StatusPublisher:
        if self.enabled:
            self.publish(RUNNING)
            self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def publish(self, state: str) -> None:
        if self.enabled:
            self.store.publish_status(snapshot(self.engine, self.store, state, self.started_at,
                                               self.counter))

    def finish(self, state: str) -> None:
        """The run ended (complete, interrupted or failed): the last snapshot says so."""
        self.publish(state)

    async def _tick(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(self.interval)
            self.publish(RUNNING)
            ticks += 1
            if self.manifest is not None and ticks % MANIFEST_EVERY == 0:
                try:
                    self.manifest.progress(self.engine)
                except Exception as exc:  # noqa: BLE001 - paperwork never stops the run
                    log.debug("could not refresh the manifest: %s", exc)


# -- the reader's side ----------------------------------------------------------------------------

@dataclass(slots=True)
class JobStatus:
    """One run of a journal as a reader sees it: the latest snapshot and whether its writer lives."""

    journal: str
    run_id: int | None
    state: str                       # running, complete, interrupted, failed, or unknown
    alive: bool | None               # None: the writer is on another host, we cannot tell
    stale: bool                      # running, but no snapshot for STALE_INTERVALS intervals
    age: float | None                # seconds since the last snapshot
    snapshot: dict[str, Any] = field(default_factory=dict)
    journal_rows: dict[str, int] = field(default_factory=dict)  # ok / failed rows of this run

    @property
    def summary(self) -> str:
        """One phrase for people: how the run stands and whether anyone is still writing it."""
        if self.state != RUNNING:
            return self.state
        if self.alive is False:
            return "stopped without finishing (its process is gone: killed?)"
        if self.stale:
            return "running, but its status has not been updated for a while"
        return "running" if self.alive else "running (on another host)"

    def as_dict(self) -> dict[str, Any]:
        return {"journal": self.journal, "run_id": self.run_id, "state": self.state,
                "summary": self.summary, "alive": self.alive, "stale": self.stale,
                "age_seconds": round(self.age, 1) if self.age is not None else None,
                "journal_rows": self.journal_rows, **{k: v for k, v in self.snapshot.items()
                                                      if k not in ("run_id", "state")}}


def writer_alive(snap: dict[str, Any]) -> bool | None:
    """Is the process that wrote ``snap`` still that process? None when it ran on another host."""
    if snap.get("host") != socket.gethostname():
        return None
    pid = snap.get("pid")
    if not isinstance(pid, int):
        return None
    started = process_start_time(pid)
    if started is not None or snap.get("process_start") is not None:
        return started is not None and started == snap.get("process_start")
    try:  # no /proc here: the pid alone
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_status(journal: JournalReader, run_id: int | None = None) -> JobStatus:
    """The latest run of ``journal`` (or run ``run_id``) as it stands now."""
    runs = journal.query("SELECT id, finished_at, counts FROM runs ORDER BY id DESC LIMIT 1"
                         if run_id is None else
                         "SELECT id, finished_at, counts FROM runs WHERE id = ?",
                         () if run_id is None else (run_id,))
    if not runs:
        return JobStatus(journal=journal.path, run_id=run_id, state="unknown", alive=None, stale=False,
                         age=None)
    rid, finished, counts = runs[0]
    rows = dict(journal.query("SELECT status, COUNT(*) FROM results WHERE run_id = ? GROUP BY status",
                              (rid,)))
    snap: dict[str, Any] = {}
    updated = None
    if "status" in journal.tables:
        found = journal.query("SELECT updated_at, snapshot FROM status WHERE run_id = ?", (rid,))
        if found:
            updated, text = found[0]
            snap = orjson.loads(text)
    if not snap and counts:  # a journal written before snapshots existed, or by a run without one
        snap = {k: v for k, v in orjson.loads(counts).items() if k in ("total", "done", "ok", "failed")}
    state = snap.get("state") or ("finished" if finished is not None else "unknown")
    age = time.time() - updated if updated is not None else None
    interval = float(snap.get("interval") or DEFAULT_INTERVAL)
    running = state == RUNNING
    return JobStatus(
        journal=journal.path, run_id=rid, state=state,
        alive=writer_alive(snap) if snap.get("pid") else (False if finished is not None else None),
        stale=running and age is not None and age > STALE_INTERVALS * interval,
        age=age, snapshot=snap,
        journal_rows={"ok": int(rows.get("ok", 0)), "failed": int(rows.get("failed", 0))})


def journal_path(path: str | Path) -> Path:
    """OUTPUT or JOURNAL: the store itself, or the output (file or folder) it sits beside."""
    from .report.data import resolve_store

    return resolve_store(path)
