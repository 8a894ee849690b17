"""The engine: one queue, many servers, each with its own slots pulling the next item when free.

Pull-based scheduling is what keeps a mixed fleet busy to the end: a fast server simply comes back
for more sooner, and a slow one never holds a fixed slice of the input. The engine knows requests,
servers and the store; it knows nothing about files, tables or terminals. Results leave through
``on_outcome`` in input order (a small reorder buffer), and the input is read only as far ahead as
``window`` rows, so memory does not grow with the job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..backends import BackendError, Reply, ServerInfo, make_backend
from ..checks import json_answer_problem
from ..config import ServerSpec
from ..errors import NoServerError
from ..http import HttpClient, default_client
from ..requests import GROUP_SEP, Request, request_key
from ..results import Outcome
from ..store import Store
from .costs import Speeds, TimeoutPolicy, hedge_gain
from .queue import IDLE, WorkQueue
from .retry import BUSY_STATUSES, RetryPolicy
from .servers import ServerState, default_slots, describe_probe_error, probe_one, resolve_model

log = logging.getLogger("corral")

DISPATCH_BATCH = 256


@dataclass(slots=True)
class EngineSettings:
    # Seconds per request attempt. None: derived per request from its expected tokens and the
    # server's observed speed (costs.TimeoutPolicy: 4x expected, 30 s floor, 900 s ceiling, 300 s
    # before the first answer). A number (--timeout, or a server's own timeout) fixes it for all.
    timeout: float | None = None
    timeout_floor: float = 30.0
    timeout_ceiling: float = 900.0
    # Tail handling: a slot with nothing queued re-sends an item a slower server still holds when
    # it would finish it at least ``hedge_margin`` times sooner; the first answer wins.
    # Length-aware order: queued items leave longest first by estimated cost (costs.Speeds.cost).
    longest_first: bool = True
    # Slots learnt per server and model (servers.SlotControl): start from the config or probe, try
    # up to ``adaptive_ceiling`` x that while throughput rises, halve on 503/429. --concurrency
    # fixes them.
    adaptive_slots: bool = True
    adaptive_ceiling: float = 2.0
    hedge: bool = True
    hedge_margin: float = 1.5
    hedge_min_gain: float = 0.25      # seconds: a hedge costs a request, so only for a real gain
    probe_timeout: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    window: int | None = None         # rows read ahead of the oldest unfinished one
    rate_limit_delay: float = 0.0     # seconds between request starts (seed 003's knob)
    concurrency: int | None = None    # slots per server, overriding config and probes
    max_outage: float = 300.0         # seconds with no live server for a model before its rows fail
    retry_failed: bool = False        # re-send rows that failed in an earlier run
    max_in_flight: int | None = None  # a cap on requests in flight across all servers
    # Content check of an answer: a message when it is not what was asked. By default, a request
    # asking for JSON (format / response_format) must get JSON (corral.checks.json_answer_problem).
    validate: Callable[[Request, Reply], str | None] | None = None
    content_retries: int = 2          # re-asks (with another seed) when validate() complains
    # Look requests up in the store and record their outcomes. Off for callers that journal at a
    # finer grain themselves (embeddings keep one vector per text, not one row per batch).
    journal: bool = True


@dataclass(slots=True)
class JobStats:
    """Live counters, read by progress displays while the job runs."""

    total: int | None = None
    done: int = 0
    ok: int = 0
    failed: int = 0
    cached: int = 0
    deduplicated: int = 0
    sent: int = 0
    retries: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hedged: int = 0          # items re-sent to an idle server while a slower one held them
    hedge_wins: int = 0      # ... where the re-sent copy answered first
    hedge_cancelled: int = 0 # attempts cancelled (or answers dropped) because the other copy won
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "total": self.total, "done": self.done, "ok": self.ok, "failed": self.failed,
            "cached": self.cached, "deduplicated": self.deduplicated, "sent": self.sent,
            "retries": self.retries, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "hedged": self.hedged,
            "hedge_wins": self.hedge_wins, "hedge_cancelled": self.hedge_cancelled, "seconds": round(self.elapsed, 3),
        }


@dataclass(slots=True, eq=False)
class _Item:
    request: Request
    attempts: int = 0
    failures: int = 0
    busy: int = 0
    invalid: int = 0
    followers: list[Request] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    cost: float = 0.0                  # estimated when dispatched (costs.Speeds.cost)
    lane: str = ""                     # the queue it waits in: its model, or its split-mode group
    runs: list[_Run] = field(default_factory=list)  # attempts in flight: two while hedged
    hedged: bool = False
    finished: bool = False


@dataclass(slots=True, eq=False)
class _Run:
    """One attempt of an item in flight on a server."""

    server: ServerState
    started: float
    task: asyncio.Task[Any]   # the slot awaiting the answer: cancelled when the other copy wins
    hedge: bool = False
    lost: bool = False        # the other copy answered first


class Engine:
    """Probe servers, then run streams of requests over them. Use as ``async with Engine(...)``."""

    def __init__(self, servers: list[ServerSpec], store: Store | None = None,
                 settings: EngineSettings | None = None, *, http: HttpClient | None = None) -> None:
        if not servers:
            raise NoServerError("no servers given: pass --server URL, --config FILE or --local")
        self.specs = servers
        self.store = store if store is not None else Store(None)
        self.settings = settings or EngineSettings()
        self.servers: list[ServerState] = []
        self.unreachable: list[str] = []
        self.stats = JobStats()
        self._given_http = http  # None: the engine makes its own (default_client) and closes it
        self._http: HttpClient | None = None
        self._serves: dict[tuple[int, str], bool] = {}
        self._key_kinds: dict[str, str] = {}
        self._served_choices: dict[tuple[int, str], list[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closing = False
        self.speeds = Speeds()  # learnt across runs of this engine: a second run starts informed
        self._in_flight_items: set[_Item] = set()

    # -- set-up -----------------------------------------------------------------------------------
    async def __aenter__(self) -> "Engine":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the HTTP client and probe every server; unreachable ones are reported and skipped."""
        self._http = self._given_http or default_client()
        backends = [make_backend(spec, self._http) for spec in self.specs]
        probes = await asyncio.gather(*(probe_one(b, self.settings.probe_timeout) for b in backends))
        for spec, backend, result in zip(self.specs, backends, probes):
            if isinstance(result, ServerInfo):
                slots = self.settings.concurrency or default_slots(spec, result)
                adaptive = self.settings.adaptive_slots and not self.settings.concurrency
                ceiling = max(slots, int(slots * self.settings.adaptive_ceiling)) if adaptive else slots
                self.servers.append(ServerState(spec=spec, backend=backend, info=result, slots=slots,
                                                ceiling=ceiling))
            else:
                self.unreachable.append(describe_probe_error(spec, result))
        if not self.servers:
            await self.aclose()
            raise NoServerError("no server answered: " + "; ".join(self.unreachable))
        for message in self.unreachable:
            log.warning("skipping server %s", message)

    async def aclose(self) -> None:
        self._closing = True
        http, self._http = getattr(self, "_http", None), None
        if http is not None and http is not self._given_http:
            await http.aclose()

    def serves(self, server: ServerState, model: str) -> bool:
        """Does the server have this model (or, for a split-mode group, any model of it)?"""
        key = (id(server), model)
        known = self._serves.get(key)
        if known is None:
            known = self._serves[key] = any(
                resolve_model(server, name) is not None for name in model.split(GROUP_SEP))
        return known

    def check_models(self, models: Iterable[str]) -> None:
        """Fail fast, before any request, when a model is on no live server."""
        names = [name for m in models for name in m.split(GROUP_SEP)]
        missing = [m for m in dict.fromkeys(names) if not any(self.serves(s, m) for s in self.servers)]
        if not missing:
            return
        have = "; ".join(
            f"{s.label} has {', '.join(sorted(s.spec.models or s.info.models)) or 'no models'}"
            for s in self.servers
        )
        names = ", ".join(repr(m) for m in missing)
        hint = " (pull it with `ollama pull MODEL` on each server)" if any(
            s.spec.api == "ollama" for s in self.servers) else ""
        raise NoServerError(f"model {names} is not on any live server{hint}: {have}")

    def key_kind(self, model: str) -> str:
        """The backend kind(s) that will answer this model: part of the request's stable key."""
        kind = self._key_kinds.get(model)
        if kind is None:  # computed once per model, not once per request
            kinds = sorted({s.spec.api for s in self.servers if self.serves(s, model)})
            kind = self._key_kinds[model] = "+".join(kinds) or "none"
        return kind

    def served_choices(self, server: ServerState, lane: str) -> list[str]:
        """The models of a split-mode group (``a|b``) this server has, in the group's order."""
        key = (id(server), lane)
        served = self._served_choices.get(key)
        if served is None:  # once per server and group, not once per row
            served = self._served_choices[key] = [
                m for m in lane.split(GROUP_SEP) if resolve_model(server, m) is not None]
        return served

    def _has_room(self, server: ServerState, lane: str) -> bool:
        """Is a slot free for this model (or, for a group, any model of it) on this server?"""
        if GROUP_SEP not in lane:
            return server.has_room(lane)
        return any(server.has_room(m) for m in self.served_choices(server, lane))

    @property
    def total_slots(self) -> int:
        return sum(s.slots for s in self.servers)

    # -- running ----------------------------------------------------------------------------------
    async def run(self, requests: Iterable[Request], on_outcome: Callable[[Outcome], None],
                  total: int | None = None) -> JobStats:
        """Run every request; ``on_outcome`` receives one Outcome per request, in input order."""
        self._closing = False
        self.stats = JobStats(total=total)
        loop = asyncio.get_running_loop()
        window_size = self.settings.window or max(2048, 16 * self.total_slots)
        self._window = asyncio.Semaphore(window_size)
        # Without longest_first every item weighs the same, and the queue keeps input order.
        self._queue: WorkQueue[_Item] = WorkQueue(
            lambda item: item.lane,
            (lambda item: item.cost) if self.settings.longest_first else None)
        self._in_flight_items = set()
        self._timeouts = TimeoutPolicy(fixed=self.settings.timeout, floor=self.settings.timeout_floor,
                                       ceiling=self.settings.timeout_ceiling)
        self._on_outcome = on_outcome
        self._reorder: dict[int, Outcome] = {}
        self._next_out = 0
        self._leaders: dict[str, _Item] = {}
        self._outstanding = 0
        self._all_read = False
        self._done = loop.create_future()
        self._flush_handle: asyncio.Handle | None = None
        self._committed: asyncio.Future[None] | None = None
        self._next_start = 0.0
        self._no_server_since: dict[str, float] = {}

        self._in_flight_cap = (asyncio.Semaphore(self.settings.max_in_flight)
                               if self.settings.max_in_flight else None)
        workers = [
            asyncio.create_task(self._worker(server, i), name=f"corral-{server.label}-{i}")
            for server in self.servers for i in range(server.ceiling)
        ]
        watchdog = asyncio.create_task(self._watch_outages())
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
            self.store.flush()  # the last answers are on disk before run() returns
        finally:
            self._closing = True
            self._queue.close()
            for handle in self._timers:
                handle.cancel()
            self._timers.clear()
            for task in (producer, *workers, watchdog, *self._tasks):
                task.cancel()
            await asyncio.gather(producer, *workers, watchdog, *self._tasks, return_exceptions=True)
            self._tasks.clear()
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            if self._done.done() and not self._done.cancelled():
                self._done.exception()  # retrieved: the caller already has this error or another
            self._flush_on_the_way_out()
            self.stats.finished = time.monotonic()
        return self.stats

    def _flush_on_the_way_out(self) -> None:
        """Interrupted or failed: journal what arrived, but never mask the error that stopped us
        (the store keeps unwritten rows, so whoever closes it next reports a lasting failure)."""
        try:
            self.store.flush()
        except Exception as exc:
            log.debug("could not journal the last answers yet: %s", exc)

    async def _produce(self, requests: Iterable[Request]) -> None:
        batch: list[Request] = []
        index = 0
        for request in requests:
            if self._window.locked() and batch:
                self._dispatch(batch)
                batch = []
            await self._window.acquire()
            request.index = index
            index += 1
            if not request.key:
                request.key = request_key(request, self.key_kind(request.model))
            batch.append(request)
            if len(batch) >= DISPATCH_BATCH:
                self._dispatch(batch)
                batch = []
                await asyncio.sleep(0)  # let slots start on what is queued
        if batch:
            self._dispatch(batch)

    def _dispatch(self, batch: list[Request]) -> None:
        if self.settings.journal:
            self.store.flush()  # so results of this run are visible to the lookup below
            stored = self.store.lookup(r.key for r in batch)
        else:
            stored = {}
        for request in batch:
            leader = self._leaders.get(request.key)
            if leader is not None:
                leader.followers.append(request)
                self.stats.deduplicated += 1
                continue
            row = stored.get(request.key)
            if row is not None and (row["status"] == "ok" or not self.settings.retry_failed):
                self.stats.cached += 1
                if request.model_choices and row["model"]:
                    request.model = row["model"]  # split mode: who answered last time
                self._deliver(self.store.outcome_from_row(request, row))
                continue
            item = _Item(request, cost=self.speeds.cost(request), lane=request.model)
            self._leaders[request.key] = item
            self._outstanding += 1
            self._queue.put(item)

    async def _worker(self, server: ServerState, slot: int) -> None:
        accepts = lambda lane: self.serves(server, lane) and self._has_room(server, lane)  # noqa: E731
        while True:
            if server.benched:
                await server.available.wait()
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
                if not self._has_room(server, item.lane):
                    # Handed over when a slot was free, but another of this server's slots took
                    # it first: back in the queue in its place (a retry in front, as before).
                    self._queue.put(item, front=item.attempts > 0)
                    continue
                if item.request.model_choices:
                    self._bind_model(server, slot, item)
            model = item.request.model
            server.take(model)
            try:
                if self.settings.rate_limit_delay > 0:
                    await self._pace()
                if self._in_flight_cap is not None:
                    async with self._in_flight_cap:
                        await self._attempt(server, item, hedge=hedge)
                else:
                    await self._attempt(server, item, hedge=hedge)
            finally:
                server.release(model)
            committed = self._committed
            if committed is not None and not committed.done():
                # The slot sends its next request only once its last answer is on disk, so a crash
                # never loses more answers than there are slots (group commit keeps this cheap).
                await asyncio.shield(committed)

    def _hedging(self) -> bool:
        """Hedge only in a tail: the input is all read, or the oldest rows hold the read-ahead
        window full. Mid-job an empty queue just means the reader is behind; scanning then would
        cost every request of a fast job a pass over everything in flight."""
        return self.settings.hedge and (self._all_read or self._window.locked())

    def _straggler_for(self, server: ServerState) -> _Item | None:
        """The in-flight item this idle server would finish soonest compared with its holder.

        Only items with one attempt in flight, on another server, of a model this server has and
        has a free slot for (a split-mode row keeps the model its first slot picked). The biggest
        gain wins."""
        if not self._in_flight_items:
            return None
        now = time.monotonic()
        best: _Item | None = None
        best_gain = 0.0
        for item in self._in_flight_items:
            if item.hedged or item.finished or len(item.runs) != 1:
                continue
            run = item.runs[0]
            model = item.request.model
            if run.server is server or not self.serves(server, model) or not server.has_room(model):
                continue
            mine = self.speeds.expected_seconds(id(server), item.request.model, item.cost)
            if mine is None:
                continue
            theirs = (None if run.server.benched else
                      self.speeds.expected_seconds(id(run.server), item.request.model, item.cost))
            gain = hedge_gain(now, run.started, theirs, mine, self.settings.hedge_margin,
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
        served = self.served_choices(server, item.lane)
        for step in range(len(served)):
            model = served[(slot + step) % len(served)]
            if server.has_room(model):
                item.request.model = model
                return
        item.request.model = served[slot % len(served)]

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next_start)
        self._next_start = start + self.settings.rate_limit_delay
        if start > now:
            await asyncio.sleep(start - now)

    def _timeout_for(self, server: ServerState, item: _Item) -> float:
        if server.spec.timeout:
            return server.spec.timeout
        return self._timeouts.seconds(
            self.speeds.expected_seconds(id(server), item.request.model, item.cost))

    async def _attempt(self, server: ServerState, item: _Item, hedge: bool = False) -> None:
        request = item.request
        if item.finished:  # a hedge picked as its other copy answered
            return
        timeout = self._timeout_for(server, item)
        server.in_flight += 1
        self.stats.in_flight += 1
        self.stats.sent += 1
        server.stats.requests += 1
        started_wall = time.time()
        t0 = time.perf_counter()
        task = asyncio.current_task()
        assert task is not None
        run = _Run(server=server, started=time.monotonic(), task=task, hedge=hedge)
        item.runs.append(run)
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
            if run.lost and task.uncancel() == 0:
                return  # the other copy answered first: not a failure, counted in _finish
            raise
        except Exception as error:  # a bug or an answer we cannot parse: the row fails, the run goes on
            log.exception("unexpected error from %s", server.label)
            exc = BackendError(f"{type(error).__name__}: {error}", kind="protocol")
        finally:
            item.runs.remove(run)
            if not item.runs:
                self._in_flight_items.discard(item)
            server.in_flight -= 1
            self.stats.in_flight -= 1
            server.stats.busy_seconds += time.perf_counter() - t0
        if item.finished:  # both copies answered in the same moment: the first one stands
            return
        if exc is not None:
            if item.runs:  # the other copy is still running: let it answer for the item
                server.stats.errors += 1
                if exc.status in BUSY_STATUSES:
                    server.control_for(request.model).on_busy(started_wall, time.time())
                if server.on_failure(exc):
                    self._bench(server)
                return
            self._on_error(server, item, exc, started_wall, time.perf_counter() - t0)
            return
        assert reply is not None
        latency = time.perf_counter() - t0
        problem = (self.settings.validate or json_answer_problem)(request, reply)
        if problem is not None:
            server.on_success()
            if item.runs:  # the other copy is still running: it may do better
                return
            item.attempts += 1
            item.invalid += 1
            if item.invalid <= self.settings.content_retries and not self._closing:
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
        self.speeds.observe(id(server), request, item.cost, latency, reply.eval_count)
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

    def _on_error(self, server: ServerState, item: _Item, exc: BackendError, started: float,
                  latency: float) -> None:
        item.attempts += 1
        server.stats.errors += 1
        busy = exc.status in BUSY_STATUSES
        if busy:
            item.busy += 1
            server.control_for(item.request.model).on_busy(started, time.time())
        else:
            item.failures += 1
        if server.on_failure(exc):
            self._bench(server)
        policy = self.settings.retry
        can_retry = exc.retryable and (
            item.busy < policy.busy_attempts if busy else item.failures < policy.max_attempts)
        if can_retry and not self._closing:
            self.stats.retries += 1
            delay = policy.delay(item.busy if busy else item.failures, exc.retry_after)
            log.info("retrying %s in %.2fs after %s from %s", item.request.id, delay, exc, server.label)
            item.timer = asyncio.get_running_loop().call_later(delay, self._requeue, item)
            self._timers.add(item.timer)
            return
        self._finish(item, Outcome(
            request=item.request, error=str(exc), error_kind=exc.kind, status_code=exc.status,
            attempts=item.attempts, server=server.label, latency=latency, started_at=started,
            finished_at=time.time(),
        ))

    def _requeue(self, item: _Item) -> None:
        if item.timer is not None:
            self._timers.discard(item.timer)
            item.timer = None
        if not self._closing:
            self._queue.put(item, front=True)

    def _bench(self, server: ServerState) -> None:
        server.bench()
        log.warning("benching %s after %d failures in a row: %s", server.label,
                    server.consecutive_failures, server.last_error)
        task = asyncio.create_task(self._reprobe(server))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _reprobe(self, server: ServerState) -> None:
        while server.benched and not self._closing:
            await asyncio.sleep(server.cooldown)
            result = await probe_one(server.backend, self.settings.probe_timeout)
            if isinstance(result, ServerInfo):
                log.warning("server %s is back", server.label)
                server.unbench()
                return
            server.cooldown = min(server.cooldown * 2, 60.0)

    async def _watch_outages(self) -> None:
        """Fail the rows of a model once no live server has had it for ``max_outage`` seconds."""
        while True:
            await asyncio.sleep(min(1.0, self.settings.max_outage / 4))
            now = time.monotonic()
            if len(self._queue) == 0 and self._in_flight_items and self._hedging():
                self._queue.wake_idle()  # estimates move with time: an overdue item may now be worth it
            for model in self._queue.models_waiting():
                if any(not s.benched and self.serves(s, model) for s in self.servers):
                    self._no_server_since.pop(model, None)
                    continue
                since = self._no_server_since.setdefault(model, now)
                if now - since < self.settings.max_outage:
                    continue
                reasons = "; ".join(f"{s.label}: {s.last_error}" for s in self.servers
                                    if self.serves(s, model))
                for item in self._queue.take_all(model):
                    self._finish(item, Outcome(
                        request=item.request, attempts=item.attempts, error_kind="no_server",
                        error=f"no live server for {model} for {self.settings.max_outage:g}s ({reasons})",
                        finished_at=time.time(),
                    ))

    def _finish(self, item: _Item, outcome: Outcome) -> None:
        item.finished = True
        for run in item.runs:  # a hedged item's other copy: cancelled (counted here, once)
            run.lost = True
            run.task.cancel()
            self.stats.hedge_cancelled += 1
        self._leaders.pop(item.request.key, None)
        self._outstanding -= 1
        if self.settings.journal:
            self.store.record(outcome)
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
        if index != self._next_out:
            self._reorder[index] = outcome
            return
        self._emit(outcome)
        while self._next_out in self._reorder:
            self._emit(self._reorder.pop(self._next_out))

    def _emit(self, outcome: Outcome) -> None:
        self._next_out += 1
        self.stats.done += 1
        if outcome.ok:
            self.stats.ok += 1
        else:
            self.stats.failed += 1
        self._window.release()
        try:
            self._on_outcome(outcome)
        except Exception as exc:  # e.g. the output disk is full: stop, the store has the results
            if not self._done.done():
                self._done.set_exception(exc)


def _reseeded(request: Request, attempt: int) -> Request:
    """The same ask with another seed: a deterministic server would repeat a bad answer otherwise.

    The key stays the original one, so the journal keeps one row per input."""
    options = dict(request.options)
    options["seed"] = int(options.get("seed") or 0) + 7919 * attempt
    return dataclasses.replace(request, options=options, meta={**request.meta, "reasked": attempt})
