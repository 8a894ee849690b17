"""A run: one pass over a stream of requests on a fleet, one queue, each server's slots pulling from it.

Pull-based scheduling is what keeps a mixed fleet busy to the end: a fast server simply comes back
for more sooner, and a slow one never holds a fixed slice of the input. In the tail, an idle slot
re-sends (hedges) an item a slower server still holds when it would finish it sooner. A run knows
requests, the fleet and the store; it knows nothing about files, tables or terminals. Results leave
through ``on_outcome`` in input order (a small reorder buffer), and the input is read only as far
ahead as ``window`` rows, so memory does not grow with the job.

Every row ends, whatever happens on its way: a fault between an answer and the journal (a counter,
the speed estimate, the answer check) fails that row with what went wrong; a fault in the journal,
an output or a slot itself ends the run with one message (`RunAborted`). A slot's task is started
only when the slots before it are all busy, so a server given thousands of slots costs only those
it really uses.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..backends import BackendError, Reply
from ..checks import json_answer_problem
from ..errors import RunAborted, UsageError
from ..requests import Request, request_key
from ..results import Outcome
from ..store import ROW_MODEL, ROW_STATUS, JournalCursor, Store, StoredRow, outcome_from_stored
from .costs import TimeoutPolicy, hedge_gain
from .fleet import Fleet
from .queue import IDLE, WorkQueue
from .rates import Ticket, after_attempt, estimate_tokens, says_rates
from .retry import BUSY_STATUSES
from .servers import ServerState
from .settings import EngineSettings, JobStats
from .tail import better_elsewhere

log = logging.getLogger("corral")

DISPATCH_BATCH = 256

# A content check of an answer: a message when it is not what was asked, else None.
Validator = Callable[[Request, Reply], str | None]
# What a run reads: requests, or (a long-lived run fed as work arrives, e.g. the gateway's) an async
# stream of chunks of requests, each chunk queued as soon as it is read.
Requests = Iterable[Request] | AsyncIterable[Iterable[Request]]
# How many rows the run will have: a number, or (a job that learns it as it reads, e.g. a fill that
# sends only the cells missing) a function asked again as rows are read.
Total = int | Callable[[], int | None] | None


@dataclass(slots=True, eq=False)
class _Item:
    request: Request
    attempts: int = 0
    failures: int = 0
    busy: int = 0
    invalid: int = 0
    timeouts: int = 0
    busy_since: float | None = None    # monotonic time of its first "server busy" answer
    followers: list[Request] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    cost: float = 0.0                  # estimated when dispatched (costs.Speeds.cost)
    lane: str = ""                     # the queue it waits in: its model, or its split-mode group
    copies: list[_Copy] = field(default_factory=list)  # attempts in flight: two while hedged
    hedged: bool = False
    finished: bool = False


@dataclass(slots=True, eq=False)
class _Copy:
    """One attempt of an item in flight on a server."""

    server: ServerState
    started: float
    task: asyncio.Task[Any]   # the slot awaiting the answer: cancelled when the other copy wins
    hedge: bool = False
    lost: bool = False        # the other copy answered first


@dataclass(slots=True, eq=False)
class _Slots:
    """A server's slot tasks, started as they are needed, and how many of them hold an item."""

    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    busy: int = 0


class Run:
    """One pass over ``requests``; build it inside the event loop and ``await run.execute(requests)``.

    ``validate`` checks each answer (default: a request asking for JSON must get JSON); ``window``
    is how many rows are read ahead of the oldest unfinished one (default: 16 per slot, at least
    2048). ``ordered=False`` passes each outcome on as it finishes, and ``window`` then counts rows
    read and not yet finished, so one slow row never holds back the others (the gateway's batches
    share a run). ``ready()``, when given, is asked before each next row is read, and False waits
    for outcomes to be passed on (a table's runner says when it holds enough chunks). ``stats`` is
    live while the run goes on."""

    def __init__(self, fleet: Fleet, store: Store, settings: EngineSettings,
                 on_outcome: Callable[[Outcome], None], *, total: Total = None,
                 validate: Validator | None = None, window: int | None = None,
                 ordered: bool = True, ready: Callable[[], bool] | None = None) -> None:
        self.fleet = fleet
        self.store = store
        self._journal: JournalCursor | None = None  # opened at the first lookup
        self.settings = settings
        self._total = total if callable(total) else None
        self.stats = JobStats(total=None if callable(total) else total)
        self._on_outcome = on_outcome
        self._validate: Validator = validate or json_answer_problem
        self._window = _Window(window or max(2048, 16 * fleet.total_slots))
        self._ready = ready
        # Without longest_first every item weighs the same, and the queue keeps input order.
        self._queue: WorkQueue[_Item] = WorkQueue(
            lambda item: item.lane,
            (lambda item: item.cost) if settings.longest_first else None)
        self._in_flight_items: set[_Item] = set()
        self._timeouts = TimeoutPolicy(fixed=settings.timeout, floor=settings.timeout_floor,
                                       ceiling=settings.timeout_ceiling)
        self._in_flight_cap = asyncio.Semaphore(settings.max_in_flight) if settings.max_in_flight else None
        self._ordered = ordered
        self._reorder: dict[int, Outcome] = {}
        self._next_out = 0
        self._leaders: dict[str, _Item] = {}
        self._outstanding = 0
        self._all_read = False
        self._closing = False
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._flush_handle: asyncio.Handle | None = None
        self._committed: asyncio.Future[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._paced = False  # the run's first request goes at once (rate_limit_delay)
        self._read = 0
        self._caught_up = False
        self._no_server_since: dict[str, float] = {}
        self._slots: dict[int, _Slots] = {}

    async def execute(self, requests: Requests) -> JobStats:
        """Run every request; ``on_outcome`` receives one Outcome per request, in input order."""
        for server in self.fleet.servers:
            self._slots[id(server)] = _Slots()
            self._start_slot(server)
        stop_hearing = self.fleet.on_join(self._server_joined)
        self.fleet.watch_absent()
        watchdog = asyncio.create_task(self._watch_outages(), name="corral-watchdog")
        watchdog.add_done_callback(self._task_ended)
        # The producer runs beside the wait for the end: when the journal or an output cannot be
        # written (_done fails), the run stops at once, even with the producer waiting for room in
        # the read-ahead window.
        producer = asyncio.create_task(self._produce(requests), name="corral-producer")
        try:
            await asyncio.wait((producer, self._done), return_when=asyncio.FIRST_COMPLETED)
            if not self._done.done():
                producer.result()  # an input error surfaces here
                self._all_read = True
                if self._hedging():
                    self._queue.wake_idle()  # slots that went idle before the end was known
                if self._outstanding == 0:
                    self._done.set_result(None)
            await self._done
            self.store.flush()  # the last answers are on disk before execute() returns
        finally:
            self._closing = True
            self._queue.close()
            for handle in self._timers:
                handle.cancel()
            self._timers.clear()
            workers = [task for slots in self._slots.values() for task in slots.tasks]
            for task in (producer, *workers, watchdog):
                task.cancel()
            await asyncio.gather(producer, *workers, watchdog, return_exceptions=True)
            stop_hearing()
            await self.fleet.stop_reprobes()
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            if self._done.done() and not self._done.cancelled():
                self._done.exception()  # retrieved: the caller already has this error or another
            self._flush_on_the_way_out()
            self.stats.finished = time.monotonic()
        return self.stats

    def _server_joined(self, server: ServerState) -> None:
        """A server that was down (or was added to the config) answered: its slots start pulling."""
        if id(server) not in self._slots:
            self._slots[id(server)] = _Slots()
            self._start_slot(server)

    def _start_slot(self, server: ServerState) -> None:
        """One more slot task for ``server`` (never more than its ceiling)."""
        slots = self._slots[id(server)]
        if len(slots.tasks) >= server.max_tasks or self._closing:
            return
        number = len(slots.tasks)
        task = asyncio.create_task(self._worker(server, number), name=f"corral-{server.label}-{number}")
        task.add_done_callback(self._task_ended)
        slots.tasks.append(task)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A slot or the watchdog must only end with the run: a fault in one ends the run, said once,
        instead of leaving its rows unfinished for ever."""
        if task.cancelled() or task.exception() is None:
            return
        self._abort(task.exception(), f"{task.get_name()} stopped")

    def _abort(self, error: BaseException | None, where: str) -> None:
        """End the run with ``error``: as it is when it already says what to do (a full disk, a
        journal that cannot be written), else as a `RunAborted` naming where it happened."""
        if self._done.done() or error is None:
            return
        if not isinstance(error, UsageError):
            log.debug("%s", where, exc_info=error)  # the traceback, for -vv
            error = RunAborted(f"the run stopped: {where}: {type(error).__name__}: {error}; the answers "
                               "journaled so far are kept, re-run the same command to resume")
        self._done.set_exception(error)

    @property
    def _stopping(self) -> bool:
        """No more retries or re-asks: the run is ending, or the fleet was closed under it."""
        return self._closing or self.fleet.closed

    def _flush_on_the_way_out(self) -> None:
        """Interrupted or failed: journal what arrived, but never mask the error that stopped us
        (the store keeps unwritten rows, so whoever closes it next reports a lasting failure)."""
        try:
            self.store.flush()
        except Exception as exc:
            log.debug("could not journal the last answers yet: %s", exc)

    # -- reading the input ------------------------------------------------------------------------
    async def _produce(self, requests: Requests) -> None:
        """Read, key and dispatch the input in batches. This is also the whole of a resume's work
        for rows already in the journal, so it stays lean: no await per row while there is room.
        An async stream of chunks (the gateway's) is read chunk by chunk."""
        if isinstance(requests, AsyncIterable):
            chunks = aiter(requests)
            while True:
                self._caught_up = True  # while the stream waits for work, the run is in its tail
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return
                finally:
                    self._caught_up = False
                await self._produce(chunk)
        batch: list[Request] = []
        index = self._read
        key_kind = self.fleet.key_kind
        window = self._window
        ready = self._ready
        for request in requests:
            if window.free <= 0:
                if batch:
                    self._dispatch(batch)
                    batch = []
                await window.room()
            window.free -= 1
            request.index = index
            index += 1
            self._read = index
            if not request.key:
                try:
                    request.key = request_key(request, key_kind(request.model))
                except (TypeError, ValueError) as exc:  # orjson: a lone surrogate, a bad number
                    refused = Outcome(
                        request=request, error=f"this request cannot be sent: it is not valid JSON text "
                        f"({exc})", error_kind="invalid_request", finished_at=time.time())
                    self._count(refused)
                    self._deliver(refused)
                    continue
            batch.append(request)
            if len(batch) >= DISPATCH_BATCH:
                self._dispatch(batch)
                batch = []
                await asyncio.sleep(0)  # let slots start on what is queued
            if ready is not None and not ready():
                # The source holds enough unanswered input (a table's chunks): read on only once
                # outcomes have been passed on, so a sparse job does not read far ahead.
                if batch:
                    self._dispatch(batch)
                    batch = []
                while not ready():
                    await window.released()
        if batch:
            self._dispatch(batch)
        self.stats.read = self._read
        if self._total is not None:
            self.stats.total = self._total()

    def _dispatch(self, batch: list[Request]) -> None:
        self.stats.read = self._read
        if self._total is not None:
            self.stats.total = self._total()
        stored: dict[str, StoredRow] = {}
        if self.settings.journal:
            self.store.flush()  # so results of this run are visible to the lookup below
            if self._journal is None:
                self._journal = self.store.resume_reader()
            stored = self._journal.find(list({r.key: None for r in batch}))
        retry_failed = self.settings.retry_failed
        speeds = self.fleet.speeds
        for request in batch:
            leader = self._leaders.get(request.key)
            if leader is not None:
                leader.followers.append(request)
                self.stats.deduplicated += 1
                continue
            row = stored.get(request.key)
            if row is not None and (row[ROW_STATUS] == "ok" or not retry_failed):
                self.stats.cached += 1
                if request.model_choices and row[ROW_MODEL]:
                    request.model = row[ROW_MODEL]  # split mode: who answered last time
                outcome = outcome_from_stored(request, row)
                self._count(outcome)
                self._deliver(outcome)
                continue
            item = _Item(request, cost=speeds.cost(request), lane=request.model)
            self.stats.queued += 1
            self.stats.work_left += item.cost
            self._leaders[request.key] = item
            self._outstanding += 1
            self._queue.put(item)

    # -- the slots --------------------------------------------------------------------------------
    async def _worker(self, server: ServerState, slot: int) -> None:
        serves, has_room = self.fleet.serves, self.fleet.has_room
        accepts = lambda lane: serves(server, lane) and has_room(server, lane)  # noqa: E731
        slots = self._slots[id(server)]
        while True:
            if server.benched:
                await server.available.wait()
            if server.rates is not None:  # a rate-limited server's slots sleep, not hold rows
                wait = server.rates.hold(time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
            hedge = False
            item = self._queue.get_nowait(accepts)
            if item is None and self._hedging():
                item = self._straggler_for(server)
                hedge = item is not None
            if item is None:
                got = await self._queue.get(accepts)
                if got is None:
                    return
                if got is IDLE:  # the queue ran dry: look again for a straggler worth a hedge
                    continue
                item = got
            if server.benched:
                if not hedge:
                    self._queue.put(item, front=True)
                continue
            if not hedge:
                if not has_room(server, item.lane):
                    # Handed over when a slot was free, but another of this server's slots took
                    # it first: back in the queue in its place (a retry in front, as before).
                    self._queue.put(item, front=item.attempts > 0)
                    continue
                if item.request.model_choices:
                    self._bind_model(server, slot, item)
            if not hedge and self._all_read and self._leave_for_faster(server, item):
                self._queue.put(item, front=item.attempts > 0)
                mine = self.fleet.speeds.expected_seconds(id(server), item.request.model, item.cost)
                await asyncio.sleep((mine or 0.0) / 4)  # look again once the queue has moved on
                continue
            ticket: Ticket | None = None
            if server.rates is not None:
                ticket = server.rates.admit(time.monotonic(), estimate_tokens(item.request, self.fleet.speeds))
                if ticket is None:  # over a budget for this row's tokens: let another server have it
                    if hedge:
                        item.hedged = False
                    else:
                        self._queue.put(item, front=item.attempts > 0)
                    continue
            model = item.request.model
            server.take(model)
            slots.busy += 1
            if slots.busy >= len(slots.tasks):
                self._start_slot(server)  # every slot of this server is at work: one more may be
            try:
                if self.settings.rate_limit_delay > 0:
                    await self._pace()
                if self._in_flight_cap is not None:
                    async with self._in_flight_cap:
                        await self._attempt(server, item, hedge=hedge, ticket=ticket)
                else:
                    await self._attempt(server, item, hedge=hedge, ticket=ticket)
            finally:
                slots.busy -= 1
                server.release(model)
            committed = self._committed
            if committed is not None and not committed.done():
                # The slot sends its next request only once its last answer is on disk, so a crash
                # never loses more answers than there are slots (group commit keeps this cheap).
                await asyncio.shield(committed)

    def _leave_for_faster(self, server: ServerState, item: _Item) -> bool:
        """In the tail: would the rest of the fleet answer this row sooner (engine/tail.py)?"""
        return better_elsewhere(server, self.fleet.servers, self.fleet.speeds, item.request.model,
                                item.cost, len(self._queue) + 1)

    def _hedging(self) -> bool:
        """Hedge only in a tail: the input is all read, or the oldest rows hold the read-ahead
        window full. Mid-job an empty queue just means the reader is behind; scanning then would
        cost every request of a fast job a pass over everything in flight."""
        return self.settings.hedge and (self._all_read or self._caught_up or self._window.locked())

    def _straggler_for(self, server: ServerState) -> _Item | None:
        """The in-flight item this idle server would finish soonest compared with its holder.

        Only items with one attempt in flight, on another server, of a model this server has and
        has a free slot for (a split-mode row keeps the model its first slot picked). The biggest
        gain wins."""
        if not self._in_flight_items:
            return None
        now = time.monotonic()
        speeds = self.fleet.speeds
        best: _Item | None = None
        best_gain = 0.0
        for item in self._in_flight_items:
            if item.hedged or item.finished or len(item.copies) != 1:
                continue
            copy = item.copies[0]
            model = item.request.model
            if (copy.server is server or not self.fleet.serves(server, model)
                    or not server.has_room(model, ahead=False)):  # a hedge waiting in a queue gains nothing
                continue
            mine = speeds.expected_seconds(id(server), item.request.model, item.cost)
            if mine is None:
                continue
            theirs = (None if copy.server.benched else
                      speeds.expected_seconds(id(copy.server), item.request.model, item.cost))
            gain = hedge_gain(now, copy.started, theirs, mine, self.settings.hedge_margin,
                              self.settings.hedge_min_gain)
            if gain is not None and gain > best_gain:
                best, best_gain = item, gain
        if best is not None:
            best.hedged = True
            self.stats.hedged += 1
            log.debug("hedging %s on %s (%.2fs sooner)", best.request.id, server.label, best_gain)
        return best

    def _bind_model(self, server: ServerState, slot: int, item: _Item) -> None:
        """Split mode: this slot answers with its own model of the group (slot i -> model i mod k),
        so each model has its own slots pulling from the one queue and a slow model does less.
        When that model's learnt slots are all taken, the next model of the group with room."""
        served = self.fleet.served_choices(server, item.lane)
        for step in range(len(served)):
            model = served[(slot + step) % len(served)]
            if server.has_room(model):
                item.request.model = model
                return
        item.request.model = served[slot % len(served)]

    async def _pace(self) -> None:
        """OllamaManager's ``rate_limit_delay``: a slot waits that long before each request but the
        run's first, holding its slot as the seed's semaphore does (so at most ``max_concurrent``
        requests per delay plus answer time, never a burst of them)."""
        if self._paced:
            await asyncio.sleep(self.settings.rate_limit_delay)
        self._paced = True

    def _timeout_for(self, server: ServerState, item: _Item) -> float:
        if server.spec.timeout:
            return server.spec.timeout
        speeds = self.fleet.speeds
        return self._timeouts.seconds(
            speeds.expected_seconds(id(server), item.request.model, speeds.timeout_cost(item.request)))

    # -- one attempt ------------------------------------------------------------------------------
    async def _attempt(self, server: ServerState, item: _Item, hedge: bool = False,
                       ticket: Ticket | None = None) -> None:
        request = item.request
        if item.finished:  # a hedge picked as its other copy answered
            return
        timeout = self._timeout_for(server, item)
        if server.in_flight >= server.limit:
            # Queued ahead: it waits for the request before it (itself cut at its timeout) first.
            timeout *= 2 + server.in_flight - server.limit
        server.in_flight += 1
        self.stats.in_flight += 1
        self.stats.sent += 1
        server.stats.requests += 1
        if hedge:
            server.stats.hedges += 1
        started_wall = time.time()
        t0 = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None
        copy = _Copy(server=server, started=time.monotonic(), task=task, hedge=hedge)
        item.copies.append(copy)
        self._in_flight_items.add(item)
        if len(self._queue) == 0 and self._queue.waiting_slots and self._hedging():
            self._queue.wake_idle()  # idle slots elsewhere may finish this one sooner
        # The send is awaited in this slot's own task (no task per request: this is the hot path);
        # when a hedged item's other copy wins, _finish cancels this task and we take the
        # cancellation back here (uncancel), unless the run is being torn down as well.
        exc: BackendError | None = None
        reply: Reply | None = None
        try:
            reply = await server.backend.send(request, timeout)
        except BackendError as error:
            exc = error
        except asyncio.CancelledError:
            if copy.lost and task.uncancel() == 0:
                return  # the other copy answered first: not a failure, counted in _finish
            raise
        except Exception as error:  # a bug or an answer we cannot parse: the row fails, the run goes on
            log.error("unexpected error from %s: %s: %s", server.label, type(error).__name__, error,
                      exc_info=log.isEnabledFor(logging.DEBUG))
            exc = BackendError(f"{type(error).__name__}: {error}", kind="protocol")
        finally:
            item.copies.remove(copy)
            if not item.copies:
                self._in_flight_items.discard(item)
            server.in_flight -= 1
            self.stats.in_flight -= 1
            server.stats.busy_seconds += time.perf_counter() - t0
        if ticket is not None or says_rates(reply, exc):
            after_attempt(server.rate_limiter(), time.monotonic(), ticket, reply, exc,
                          estimate_tokens(request, self.fleet.speeds), self.settings.max_busy_seconds)
        if item.finished:  # both copies answered in the same moment: the first one stands
            return
        try:
            if exc is not None:
                self._on_failed_attempt(server, item, exc, started_wall, time.perf_counter() - t0)
            else:
                assert reply is not None
                self._on_reply(server, item, reply, hedge, started_wall, time.perf_counter() - t0)
        except Exception as error:  # a fault past the send: the row (or the run) still ends
            self._row_fault(server, item, error, started_wall)

    def _on_reply(self, server: ServerState, item: _Item, reply: Reply, hedge: bool, started_wall: float,
                  latency: float) -> None:
        """An answer arrived: check it, learn from it, count it, finish the row."""
        request = item.request
        problem = self._validate(request, reply)
        if problem is not None:
            server.on_success()
            if item.copies:  # the other copy is still running: it may do better
                return
            item.attempts += 1
            item.invalid += 1
            if item.invalid <= self.settings.content_retries and not self._stopping:
                self.stats.retries += 1
                item.request = _reseeded(request, item.invalid)
                self._queue.put(item, front=True)
                return
            self._finish(item, Outcome(
                request=request, reply=reply, error=problem, error_kind="invalid_answer",
                attempts=item.attempts, server=server.label, latency=latency,
                started_at=started_wall, finished_at=time.time(),
            ))
            return
        server.on_success()
        server.stats.ok += 1
        if server.control_for(request.model).on_answer(time.monotonic(), len(self._queue) > 0, item.cost):
            self._queue.wake_idle()  # a slot more for this model: waiting slots look again
        self.fleet.speeds.observe(id(server), request, item.cost, latency, reply.eval_count)
        if hedge:
            self.stats.hedge_wins += 1
        server.stats.prompt_tokens += reply.prompt_eval_count or 0
        server.stats.completion_tokens += reply.eval_count or 0
        server.stats.eval_ns += reply.eval_duration or 0
        self.stats.prompt_tokens += reply.prompt_eval_count or 0
        self.stats.completion_tokens += reply.eval_count or 0
        item.attempts += 1
        self._finish(item, Outcome(
            request=request, reply=reply, attempts=item.attempts, server=server.label,
            latency=latency, started_at=started_wall, finished_at=time.time(),
        ))

    def _on_failed_attempt(self, server: ServerState, item: _Item, exc: BackendError, started_wall: float,
                           latency: float) -> None:
        if item.copies:  # the other copy is still running: let it answer for the item
            server.stats.errors += 1
            if exc.status in BUSY_STATUSES:
                server.control_for(item.request.model).on_busy(started_wall, time.time())
            if server.on_failure(exc):
                self.fleet.bench(server)
            return
        self._on_error(server, item, exc, started_wall, latency)

    def _row_fault(self, server: ServerState, item: _Item, error: Exception, started: float) -> None:
        """A fault in corral between an answer and the journal. Before the row ended, the row fails
        with what went wrong (``--retry-failed`` sends it again); once it has ended, what failed is
        the journal or the delivery, and the run stops."""
        if item.finished:
            self._abort(error, f"recording row {item.request.id or item.request.index} "
                               f"(answered by {server.label})")
            return
        log.error("internal error handling the answer to %s from %s: %s: %s", item.request.id,
                  server.label, type(error).__name__, error, exc_info=log.isEnabledFor(logging.DEBUG))
        if item.timer is not None:
            item.timer.cancel()
            self._timers.discard(item.timer)
            item.timer = None
        try:
            self._finish(item, Outcome(
                request=item.request, error=f"internal error handling the answer from {server.label}: "
                f"{type(error).__name__}: {error}", error_kind="internal",
                attempts=max(item.attempts, 1), server=server.label, started_at=started,
                finished_at=time.time()))
        except Exception as again:
            self._abort(again, f"recording row {item.request.id or item.request.index}")

    def _on_error(self, server: ServerState, item: _Item, exc: BackendError, started: float,
                  latency: float) -> None:
        item.attempts += 1
        server.stats.errors += 1
        busy = exc.status in BUSY_STATUSES
        now = time.monotonic()
        if busy:
            item.busy += 1
            if item.busy_since is None:
                item.busy_since = now
            server.control_for(item.request.model).on_busy(started, time.time())
        else:
            item.failures += 1
            if exc.kind == "timeout":
                item.timeouts += 1
        if server.on_failure(exc):
            self.fleet.bench(server)
        policy = self.settings.retry
        error = str(exc)
        busy_left = 0.0
        if busy:
            assert item.busy_since is not None
            busy_for = now - item.busy_since
            busy_left = self.settings.max_busy_seconds - busy_for
            can_retry = item.busy < policy.busy_attempts and busy_left > 0
            if busy_left <= 0:
                error += (f" (busy for {busy_for:.0f}s, the most a row waits for a busy server: "
                          f"max_busy_seconds {self.settings.max_busy_seconds:g})")
        elif exc.kind == "timeout":
            can_retry = item.timeouts < policy.timeout_attempts and item.failures < policy.max_attempts
            if not can_retry:
                error += f" ({item.timeouts} attempts timed out)"
        else:
            can_retry = item.failures < policy.max_attempts
        if exc.retryable and can_retry and not self._stopping:
            self.stats.retries += 1
            delay = policy.delay(item.busy if busy else item.failures, exc.retry_after)
            if busy:
                delay = min(delay, busy_left)  # a long Retry-After ends at the row's busy budget
            log.info("retrying %s in %.2fs after %s from %s", item.request.id, delay, exc, server.label)
            item.timer = asyncio.get_running_loop().call_later(delay, self._requeue, item)
            self._timers.add(item.timer)
            return
        self._finish(item, Outcome(
            request=item.request, error=error, error_kind=exc.kind, status_code=exc.status,
            attempts=item.attempts, server=server.label, latency=latency, started_at=started,
            finished_at=time.time(),
        ))

    def _requeue(self, item: _Item) -> None:
        if item.timer is not None:
            self._timers.discard(item.timer)
            item.timer = None
        if self._stopping or item.finished:
            return
        try:
            self._queue.put(item, front=True)
        except Exception as error:  # a timer callback's fault would otherwise only be logged
            self._abort(error, f"queueing row {item.request.id or item.request.index} again")

    async def _watch_outages(self) -> None:
        """Fail the rows of a model once no live server has had it for ``max_outage`` seconds.

        A server that answers only "busy" since some moment is not live from that moment: the
        outage counts from its first busy answer, not from when it was benched."""
        servers, serves = self.fleet.servers, self.fleet.serves
        while True:
            await asyncio.sleep(min(1.0, self.settings.max_outage / 4))
            now = time.monotonic()
            if len(self._queue) == 0 and self._in_flight_items and self._hedging():
                self._queue.wake_idle()  # estimates move with time: an overdue item may now be worth it
            self._fail_busy_rows(now)
            for model in self._queue.models_waiting():
                serving = [s for s in servers if serves(s, model)]
                if any(not s.benched and s.busy_since is None for s in serving):
                    self._no_server_since.pop(model, None)
                    continue
                first_busy = min((s.busy_since for s in serving if s.busy_since is not None), default=now)
                if serving and all(s.busy_since is not None for s in serving) \
                        and now - first_busy >= self.settings.max_busy_seconds:
                    # Every server of the model has answered only "busy" for a row's whole busy
                    # budget: the rows waiting for them would wait on busy servers too.
                    self._fail_waiting(model, "busy", (
                        f"every server of {model} answered busy for {now - first_busy:.0f}s, the most a "
                        f"row waits for a busy server (max_busy_seconds {self.settings.max_busy_seconds:g})"))
                    continue
                since = self._no_server_since.setdefault(model, min(now, first_busy))
                if now - since < self.settings.max_outage:
                    continue
                reasons = "; ".join(f"{s.label}: {s.last_error}" for s in serving)
                self._fail_waiting(model, "no_server",
                                   f"no live server for {model} for {self.settings.max_outage:g}s ({reasons})")

    def _fail_waiting(self, model: str, kind: str, error: str) -> None:
        """Fail every row of ``model`` still waiting in the queue, with one reason."""
        for item in self._queue.take_all(model):
            self._finish(item, Outcome(request=item.request, attempts=item.attempts, error_kind=kind,
                                       error=error, finished_at=time.time()))

    def _fail_busy_rows(self, now: float) -> None:
        """Rows waiting for another try whose time on busy answers is spent: failed now, not when
        their server is tried again (a server benched for answering only "busy" may be away for
        a minute, far past ``max_busy_seconds``)."""
        budget = self.settings.max_busy_seconds
        spent = self._queue.take_retries_if(
            lambda item: item.busy_since is not None and now - item.busy_since >= budget)
        for item in spent:
            self._finish(item, Outcome(
                request=item.request, attempts=item.attempts, error_kind="busy",
                error=(f"servers answered busy for {now - (item.busy_since or now):.0f}s, the most a row "
                       f"waits for a busy server (max_busy_seconds {budget:g})"),
                finished_at=time.time()))

    # -- results ----------------------------------------------------------------------------------
    def _finish(self, item: _Item, outcome: Outcome) -> None:
        item.finished = True
        for copy in item.copies:  # a hedged item's other copy: cancelled (counted here, once)
            copy.lost = True
            copy.task.cancel()
            self.stats.hedge_cancelled += 1
            copy.server.stats.cancelled += 1
        self._leaders.pop(item.request.key, None)
        self._outstanding -= 1
        if self.settings.journal:
            self.store.record(outcome)
        self.stats.work_left -= item.cost
        self.stats.work_done += item.cost
        self._count(outcome, 1 + len(item.followers))
        if self._flush_handle is None:
            loop = asyncio.get_running_loop()
            self._flush_handle = loop.call_soon(self._flush)
            self._committed = loop.create_future()
        self._deliver(outcome)
        for follower in item.followers:
            if follower.model_choices:
                follower.model = outcome.request.model  # split mode: the model that answered
            self._deliver(outcome.for_request(follower))
        if self._all_read and self._outstanding == 0 and not self._done.done():
            self._done.set_result(None)

    def _flush(self) -> None:
        self._flush_handle = None
        committed, self._committed = self._committed, None
        try:
            self.store.flush()
        except Exception as exc:  # the store cannot be written: stop the run, keep what is safe
            if not self._done.done():
                self._done.set_exception(exc)
        finally:
            if committed is not None and not committed.done():
                committed.set_result(None)

    def _deliver(self, outcome: Outcome) -> None:
        """Pass outcomes on in input order; each one passed on frees a row of the read-ahead window."""
        index = outcome.request.index
        if not self._ordered:
            self._emit(outcome)
            return
        if index != self._next_out:
            self._reorder[index] = outcome
            return
        self._emit(outcome)
        while self._next_out in self._reorder:
            self._emit(self._reorder.pop(self._next_out))

    def _count(self, outcome: Outcome, rows: int = 1) -> None:
        """Count rows as they end (journaled), not as they are passed on in input order: rows are
        sent longest first, so the in-order count would lag behind the rows really done."""
        self.stats.done += rows
        if outcome.ok:
            self.stats.ok += rows
        else:
            self.stats.failed += rows

    def _emit(self, outcome: Outcome) -> None:
        self._next_out += 1
        self._window.release()
        try:
            self._on_outcome(outcome)
        except Exception as exc:  # e.g. the output disk is full: stop, the store has the results
            self._abort(exc, f"passing on the result of row {outcome.request.id or outcome.request.index}")


class _Window:
    """How many more rows may be read ahead of the oldest one not yet passed on. The reader takes
    room with ``free -= 1`` (no await while there is room) and waits in `room()` when there is none."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiter: asyncio.Future[None] | None = None

    def locked(self) -> bool:
        return self.free <= 0

    def release(self) -> None:
        self.free += 1
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def room(self) -> None:
        while self.free <= 0:
            await self.released()

    async def released(self) -> None:
        """Until the next row is passed on."""
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter


def _reseeded(request: Request, attempt: int) -> Request:
    """The same ask with another seed: a deterministic server would repeat a bad answer otherwise.

    The key stays the original one, so the journal keeps one row per input."""
    options = dict(request.options)
    options["seed"] = int(options.get("seed") or 0) + 7919 * attempt
    return dataclasses.replace(request, options=options, meta={**request.meta, "reasked": attempt})
