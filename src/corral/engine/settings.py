"""What an engine is told before it starts (``EngineSettings``) and what it counts while it runs
(``JobStats``): the two records that cross the engine's boundary.

Settings hold for every run of an engine; what changes from one run to the next (the answer check,
the read-ahead window) is an argument of ``Engine.run`` instead, so no caller edits settings
between runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..errors import UsageError
from ..limits import seconds_problem, slots_problem
from .retry import RetryPolicy

#: Seconds a row may spend on "server busy" answers (429/503, waits included) before it fails.
DEFAULT_MAX_BUSY_SECONDS = 300.0


@dataclass(slots=True)
class EngineSettings:
    # Seconds per request attempt. None: derived per request from its expected tokens and the
    # server's observed speed (costs.TimeoutPolicy: 4x expected, 30 s floor, 900 s ceiling, 120 s
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
    rate_limit_delay: float = 0.0     # seconds a slot waits before each request but the first (OllamaManager)
    concurrency: int | None = None    # slots per server, overriding config and probes
    # A hard cap per server: slots never start or are learnt past it (the Python fronts' ``workers``
    # and ``max_concurrent``: the number of calls at once, as the tools they come from mean it).
    max_slots: int | None = None
    max_outage: float = 300.0         # seconds with no live server for a model before its rows fail
    # A row's time on "server busy" answers (429/503 and the waits they ask for), from the first one:
    # past it the row fails. Busy answers are not the row's fault, but a server saying
    # "Retry-After: 100000" must not hold a row for a day.
    max_busy_seconds: float = DEFAULT_MAX_BUSY_SECONDS
    retry_failed: bool = False        # re-send rows that failed in an earlier run
    max_in_flight: int | None = None  # a cap on requests in flight across all servers
    # Re-asks (with another seed) when an answer fails the run's content check (``Engine.run``'s
    # ``validate``; by default, a request asking for JSON must get JSON: checks.json_answer_problem).
    content_retries: int = 2
    # Look requests up in the store and record their outcomes. Off for callers that journal at a
    # finer grain themselves (embeddings keep one vector per text, not one row per batch).
    journal: bool = True

    def __post_init__(self) -> None:
        """Refuse absurd settings here too, for callers that build these directly (Ray actors,
        bench sweeps): the fronts check them earlier, with the flag's or key's name."""
        problems = [f"{name} {problem}" for name, problem in (
            ("concurrency", None if self.concurrency is None else slots_problem(self.concurrency)),
            ("max_slots", None if self.max_slots is None else slots_problem(self.max_slots)),
            ("timeout", None if self.timeout is None else seconds_problem(self.timeout)),
            ("max_busy_seconds", seconds_problem(self.max_busy_seconds)),
            ("max_outage", seconds_problem(self.max_outage)),
        ) if problem]
        if problems:
            raise UsageError("; ".join(problems))


@dataclass(slots=True)
class JobStats:
    """Live counters, read by progress displays while the job runs.

    ``done``, ``ok`` and ``failed`` count rows as they end (answered or failed, and journaled),
    not as they are passed on in input order: rows are sent longest first, so the in-order count
    lags far behind the work really done. ``work_done`` / ``work_left`` are the same rows in
    estimated cost units (`costs.Speeds.cost`), which weigh the ETA when lengths differ."""

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
    read: int = 0            # rows read from the input so far
    queued: int = 0          # rows read that had to be sent (not cached, not a duplicate)
    work_done: float = 0.0   # estimated cost of the sent rows that ended
    work_left: float = 0.0   # estimated cost of the rows read, sent or waiting, not ended yet
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Rows sent and ended per second (cached rows cost nothing, so they do not count)."""
        elapsed = self.elapsed
        return max(0, self.done - self.cached) / elapsed if elapsed > 0 else 0.0

    def eta_seconds(self) -> float | None:
        """Seconds left: the estimated cost still to do over the cost done per second so far.

        The rows not read yet are assumed to cost what the rows read so far cost on average. With
        no total, or before the first sent row ends, there is no estimate (None)."""
        if self.total is None:
            return None
        if self.done >= self.total:
            return 0.0
        elapsed = self.elapsed
        if self.work_done <= 0 or elapsed <= 0 or not self.queued:
            return None
        unread = max(0, self.total - self.read)
        per_row = (self.work_done + self.work_left) / self.queued
        return (self.work_left + unread * per_row) / (self.work_done / elapsed)

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "total": self.total, "done": self.done, "ok": self.ok, "failed": self.failed,
            "cached": self.cached, "deduplicated": self.deduplicated, "sent": self.sent,
            "retries": self.retries, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "hedged": self.hedged,
            "hedge_wins": self.hedge_wins, "hedge_cancelled": self.hedge_cancelled, "seconds": round(self.elapsed, 3),
        }
