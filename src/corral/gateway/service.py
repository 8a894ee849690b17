"""The gateway: batches on one long engine run over the fleet, fed fairly, durable across restarts.

Why one run: `Engine.run` runs one stream at a time, and the engine's learning (slots, speeds,
timeouts, benching) is worth keeping across batches. So the gateway opens the engine once, through
the one job runner (`corral.runner.run_job`), and keeps a single run going whose request stream
interleaves the active batches (``_stream``: stride scheduling, `scheduler.FairShare`); each
outcome is routed back to its batch by the batch id in the request's ``meta``. The run delivers
outcomes as they finish (``ordered=False``), so one slow row never holds the other batches back.

On start, every batch that was not final is taken up again: validating ones are validated again,
running ones are read again from their first line (the journal answers what was finished),
cancelling ones and those whose window passed meanwhile are written from the journal alone.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import Engine
from ..requests import Request
from ..results import Outcome
from ..store import Store
from .batches import Batch, BatchRequestError, BatchTable
from .db import StateDB
from .files import Files
from .jobs import ActiveBatch
from .lines import MODEL_NOT_FOUND
from .scheduler import FairShare
from .validate import check_input

log = logging.getLogger("corral")

CHUNK = 256          # rows handed to the engine at a time (its dispatch batch)
TICK = 1.0           # seconds between saves of the counts, expiry checks and throughput samples
RATE_SPAN = 5        # throughput over the last this many ticks
LAST_ERRORS = 20


@dataclass(slots=True)
class GatewayOptions:
    state: Path
    max_upload_bytes: int = 200_000_000
    read_ahead: int | None = None     # rows in the engine not yet finished; None: 4 per slot, >= 256
    api_key: str | None = None        # held in memory only


class Gateway:
    """Files, batches and the engine run behind the HTTP routes (app.py)."""

    def __init__(self, engine: Engine, store: Store, options: GatewayOptions) -> None:
        self.engine = engine
        self.store = store
        self.options = options
        self.db = StateDB(options.state / "gateway.db")
        self.files = Files(options.state, self.db)
        self.batches = BatchTable(self.db)
        self.active: dict[str, ActiveBatch] = {}
        self.share: FairShare[str] = FairShare()
        self.last_errors: deque[dict[str, Any]] = deque(maxlen=LAST_ERRORS)
        self.started = time.time()
        self._served: dict[str, bool] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rates: deque[tuple[float, dict[str, int]]] = deque(maxlen=RATE_SPAN + 1)
        self._window = options.read_ahead or max(256, 4 * engine.total_slots)
        self._in_engine = 0  # rows handed to the engine and not yet back
        self._room = asyncio.Event()

    # -- the one engine run -----------------------------------------------------------------------
    async def run(self) -> None:
        """Take up unfinished batches, then run every batch until cancelled."""
        for batch in self.batches.unfinished():
            self._resume(batch)
        ticker = asyncio.create_task(self._tick())
        try:
            await self.engine.run(self._stream(), self._on_outcome, ordered=False, window=self._window)
        finally:
            ticker.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(ticker, *self._tasks, return_exceptions=True)
            for job in self.active.values():
                self.batches.save(job.batch)
                job.abort()

    async def _stream(self) -> AsyncIterator[list[Request]]:
        """Rows of the active batches, in turns, never more than the window unfinished: a row is
        read only when it can enter the engine, so a cancel or an expiry recalls nothing."""
        while True:
            room = self._window - self._in_engine
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            chunk: list[Request] = []
            while len(chunk) < min(CHUNK, room):
                batch_id = self.share.pick()
                if batch_id is None:
                    break
                job = self.active.get(batch_id)
                request = job.next_request() if job is not None else None
                if request is None:
                    self.share.remove(batch_id)
                    if job is not None:
                        self._settle_soon(job)
                    continue
                if not self._is_served(request.model):
                    self._record(Outcome(
                        request=request, error_kind=MODEL_NOT_FOUND, status_code=404,
                        error=f"The model `{request.model}` is not served by any server of this "
                              f"gateway (served: {', '.join(self._models()) or 'none'})",
                        finished_at=time.time()))
                    continue
                chunk.append(request)
                self._in_engine += 1
            if chunk:
                yield chunk
            else:
                await self.share.wait()

    def _is_served(self, model: str) -> bool:
        served = self._served.get(model)
        if served is None:
            served = self._served[model] = any(self.engine.serves(s, model) for s in self.engine.servers)
        return served

    def _models(self) -> list[str]:
        names: set[str] = set()
        for server in self.engine.servers:
            names.update(server.spec.models if server.spec.models is not None else server.info.models)
        return sorted(names)

    def _on_outcome(self, outcome: Outcome) -> None:
        """The engine's answer for a row: room for one more, and the row to its batch."""
        self._in_engine -= 1
        self._room.set()
        self._record(outcome)

    def _record(self, outcome: Outcome) -> None:
        job = self.active.get(outcome.request.meta.get("batch_id", ""))
        if job is None:
            return  # its batch ended (cancelled, expired) while the row was in flight
        job.record(outcome)
        if not outcome.ok:
            self.last_errors.appendleft({
                "time": int(outcome.finished_at or time.time()), "batch": job.id,
                "custom_id": outcome.request.id, "server": outcome.server, "error": outcome.error})
        if job.settled:
            self._settle_soon(job)

    # -- batches: create, cancel, and the moves of their state machine -----------------------------
    def create(self, input_file_id: str, endpoint: str, completion_window: str,
               metadata: dict[str, str] | None) -> Batch:
        record = self.files.get(input_file_id)
        if record is None:
            raise BatchRequestError(f"No such file: {input_file_id}", param="input_file_id", status=404)
        if record.purpose != "batch":
            raise BatchRequestError(f"file {input_file_id} has purpose {record.purpose!r}, not 'batch'",
                                    param="input_file_id")
        batch = Batch.new(input_file_id, endpoint, completion_window, metadata)
        self.batches.save(batch)
        self._spawn(self._validate(batch))
        return batch

    def cancel(self, batch_id: str) -> Batch:
        batch = self.current(batch_id)
        if batch is None:
            raise BatchRequestError(f"No such batch: {batch_id}", status=404)
        if batch.status in ("cancelling", "cancelled"):
            return batch
        batch.move("cancelling")
        self.batches.save(batch)
        job = self.active.get(batch_id)
        if job is not None:
            job.stopping = "cancelled"
            self.share.remove(batch_id)
            if job.settled:
                self._settle_soon(job)
        # A batch still validating is settled by _validate when it sees the cancel.
        return batch

    def current(self, batch_id: str) -> Batch | None:
        """The live record of a running batch (its counts move), else the saved one."""
        job = self.active.get(batch_id)
        return job.batch if job is not None else self.batches.get(batch_id)

    async def _validate(self, batch: Batch) -> None:
        path = self.files.path(batch.input_file_id)
        checked = await asyncio.to_thread(check_input, path, batch.endpoint)
        saved = self.batches.get(batch.id) or batch
        batch.status, batch.cancelling_at = saved.status, saved.cancelling_at  # a cancel meanwhile
        if checked.errors:
            if batch.status == "cancelling":
                batch.move("cancelled")
            else:
                batch.errors = checked.errors
                batch.move("failed")
            self.batches.save(batch)
            return
        batch.total = checked.total
        batch.model = next(iter(checked.models)) if len(checked.models) == 1 else None
        if batch.status == "cancelling":
            batch.move("cancelled")
            self.batches.save(batch)
            return
        batch.move("in_progress")
        self.batches.save(batch)
        self._start(batch)

    def _start(self, batch: Batch) -> None:
        job = ActiveBatch(batch, self.files, self.engine.key_kind)
        self.active[batch.id] = job
        self.share.add(batch.id, batch.priority)

    def _resume(self, batch: Batch) -> None:
        """A batch that was not final when the gateway stopped."""
        if batch.status == "validating":
            self._spawn(self._validate(batch))
            return
        if self.files.get(batch.input_file_id) is None:
            batch.errors = [{"code": "file_missing", "message": "the input file is gone", "param": None,
                             "line": None}]
            batch.status = "failed"
            batch.failed_at = int(time.time())
            self.batches.save(batch)
            return
        job = ActiveBatch(batch, self.files, self.engine.key_kind)
        self.active[batch.id] = job
        if batch.status == "cancelling":
            job.stopping = "cancelled"
        elif batch.status == "in_progress" and time.time() >= batch.expires_at:
            job.stopping = "expired"
        if job.stopping is not None:
            self._spawn(self._from_journal(job))
        else:
            self.share.add(batch.id, batch.priority)

    async def _from_journal(self, job: ActiveBatch) -> None:
        """A stopped batch after a restart: what the journal holds is its output, nothing is sent."""
        rows: list[Request] = []
        for request in job.unread():
            request.key = job.key(request)
            job.outstanding += 1
            rows.append(request)
            if len(rows) >= 500:
                self._answer_from_journal(job, rows)
                rows = []
                await asyncio.sleep(0)
        self._answer_from_journal(job, rows)
        self._settle_soon(job)

    def _answer_from_journal(self, job: ActiveBatch, rows: list[Request]) -> None:
        stored = self.store.lookup(r.key for r in rows)
        for request in rows:
            row = stored.get(request.key)
            if row is not None:
                job.record(self.store.outcome_from_row(request, row))
                continue
            job.outstanding -= 1
            if job.stopping == "expired":
                job.write_expired(request)

    def _settle_soon(self, job: ActiveBatch) -> None:
        if job.settled and not job.finalizing:
            job.finalizing = True
            self._spawn(self._finish(job))

    async def _finish(self, job: ActiveBatch) -> None:
        """The batch's last row is back: write what remains, commit the files, final status."""
        batch = job.batch
        if job.stopping == "expired":
            for count, request in enumerate(job.unread(), 1):
                job.write_expired(request)
                if count % 1000 == 0:
                    await asyncio.sleep(0)
        elif batch.status == "in_progress":
            batch.move("finalizing")
            self.batches.save(batch)
        has_output, has_errors = job.commit()
        kind = "batch_output"
        if has_output:
            batch.output_file_id = self.files.added(batch.file_id("output"), f"{batch.id}_output.jsonl", kind).id
        if has_errors:
            batch.error_file_id = self.files.added(batch.file_id("error"), f"{batch.id}_error.jsonl", kind).id
        batch.move({"expired": "expired", "cancelled": "cancelled"}.get(job.stopping or "", "completed"))
        self.batches.save(batch)
        self.active.pop(batch.id, None)
        self.share.remove(batch.id)

    # -- background -------------------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("gateway task failed", exc_info=task.exception())

    async def _tick(self) -> None:
        """Save the running batches' counts, expire what passed its window, sample throughput."""
        while True:
            await asyncio.sleep(TICK)
            now = time.time()
            for job in list(self.active.values()):
                if job.stopping is None and not job.finalizing and now >= job.batch.expires_at:
                    job.stopping = "expired"  # the status moves once its files are whole
                    self.share.remove(job.id)
                    self._settle_soon(job)
                self.batches.save(job.batch)
            self._rates.append((time.monotonic(), {s.label: s.stats.ok for s in self.engine.servers}))

    # -- what the dashboard shows -----------------------------------------------------------------
    def server_rates(self) -> dict[str, float]:
        """Answers per second per server over the last few seconds."""
        if len(self._rates) < 2:
            return {}
        (t0, first), (t1, last) = self._rates[0], self._rates[-1]
        span = max(t1 - t0, 1e-9)
        return {label: (last.get(label, 0) - first.get(label, 0)) / span for label in last}

    def gpus(self) -> list[dict[str, Any]]:
        rows = self.store.query(
            "SELECT gpu, name, utilization, memory_used, memory_total, t FROM gpu_samples "
            "WHERE run_id = ? AND t = (SELECT max(t) FROM gpu_samples WHERE run_id = ?) ORDER BY gpu",
            (self.store.run_id, self.store.run_id))
        return [{"gpu": r[0], "name": r[1], "utilization": r[2], "memory_used": r[3],
                 "memory_total": r[4]} for r in rows]

    def dashboard_state(self) -> dict[str, Any]:
        rates = self.server_rates()
        batches, _ = self.batches.page(50, None)
        shown = [self.current(b.id) or b for b in batches]
        return {
            "time": int(time.time()),
            "batches": [{"id": b.id, "status": b.status, "endpoint": b.endpoint, "model": b.model,
                         "priority": b.priority, "created_at": b.created_at,
                         "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed}}
                        for b in shown],
            "servers": [{"label": s.label, "in_flight": s.in_flight, "slots": s.limit,
                         "benched": s.benched, "ok": s.stats.ok, "errors": s.stats.errors,
                         "per_second": round(rates.get(s.label, 0.0), 2)} for s in self.engine.servers],
            "unreachable": self.engine.unreachable,
            "gpus": self.gpus(),
            "errors": list(self.last_errors),
            "engine": {"sent": self.engine.stats.sent, "cached": self.engine.stats.cached,
                       "retries": self.engine.stats.retries, "in_flight": self.engine.stats.in_flight},
        }

    def close(self) -> None:
        self.db.close()

