"""Concurrency sweep: per server, throughput and latency at each number of requests in flight.

Each level runs through corral's own engine (one server, that many slots, hedging and slot learning
off), so the figures are what a `corral run` with ``--concurrency N`` gets, client overhead included.
Throughput is completed output tokens per second of wall time (requests per second when the server
reports no token counts). The knee is the smallest level within ``tolerance`` of the best: more in
flight than that only adds queueing (latency, memory) for no more answers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..config import ServerSpec
from ..engine import Engine, EngineSettings, RetryPolicy
from ..requests import Request
from ..results import Outcome
from ..runner import run_job
from ..store import Store
from .stats import mean, quantile, rounded

DEFAULT_TOLERANCE = 0.03


@dataclass(slots=True)
class Level:
    concurrency: int
    requests: int
    ok: int
    errors: int
    seconds: float
    tokens: int
    latencies: list[float] = field(default_factory=list)

    @property
    def tokens_per_sec(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def requests_per_sec(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency, "requests": self.requests, "ok": self.ok,
            "errors": self.errors, "seconds": rounded(self.seconds), "tokens": self.tokens,
            "tokens_per_sec": rounded(self.tokens_per_sec, 2),
            "requests_per_sec": rounded(self.requests_per_sec, 3),
            "latency": rounded(mean(self.latencies)), "latency_p50": rounded(quantile(self.latencies, 0.5)),
            "latency_p95": rounded(quantile(self.latencies, 0.95)),
        }


@dataclass
class Sweep:
    """One server's sweep and its knee."""

    server: str
    model: str
    spec: ServerSpec
    levels: list[Level] = field(default_factory=list)
    tolerance: float = DEFAULT_TOLERANCE

    @property
    def by_tokens(self) -> bool:
        return any(level.tokens for level in self.levels)

    def throughput(self, level: Level) -> float:
        """The figure the knee is judged by: tokens/s, or requests/s without token counts."""
        return level.tokens_per_sec if self.by_tokens else level.requests_per_sec

    @property
    def best(self) -> Level | None:
        usable = [lv for lv in self.levels if lv.ok]
        return max(usable, key=self.throughput) if usable else None

    @property
    def knee(self) -> int | None:
        return find_knee([(lv.concurrency, self.throughput(lv)) for lv in self.levels if lv.ok],
                         self.tolerance)

    def figures(self) -> dict[str, Any]:
        best = self.best
        return {"server": self.server, "model": self.model, "knee": self.knee,
                "best": best.concurrency if best else None, "tolerance": self.tolerance,
                "unit": "tokens/s" if self.by_tokens else "requests/s",
                "levels": [lv.figures() for lv in self.levels]}


def find_knee(points: list[tuple[int, float]], tolerance: float = DEFAULT_TOLERANCE) -> int | None:
    """The smallest concurrency whose throughput is within ``tolerance`` of the best one measured."""
    if not points:
        return None
    best = max(rate for _, rate in points)
    if best <= 0:
        return None
    return min(level for level, rate in points if rate >= (1 - tolerance) * best)


def level_settings(concurrency: int, timeout: float | None, journal: bool) -> EngineSettings:
    """Exactly ``concurrency`` in flight on the one server: no slot learning, no hedged copies."""
    return EngineSettings(concurrency=concurrency, adaptive_slots=False, hedge=False, journal=journal,
                          timeout=timeout, retry=RetryPolicy(max_attempts=2), longest_first=False)


async def run_level(spec: ServerSpec, requests: list[Request], concurrency: int, *,
                    store: Store | None = None, timeout: float | None = None,
                    journal: bool = False, on_outcome: Callable[[Outcome], None] | None = None) -> Level:
    """Run ``requests`` on one server with ``concurrency`` of them in flight, timed from the first
    send to the last answer (the probe is not counted)."""
    outcomes: list[Outcome] = []

    def collect(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    started = 0.0

    async def work(engine: Engine) -> None:
        nonlocal started
        started = time.perf_counter()
        await engine.run(iter(requests), collect, total=len(requests))

    # The probe is not timed; no GPU sampling of its own (`bench` samples the whole sweep).
    await run_job(work, servers=[spec], store=store if store is not None else Store(None),
                  settings=level_settings(concurrency, timeout, journal), gpu_monitor=False, track=False)
    seconds = time.perf_counter() - started
    ok = [o for o in outcomes if o.ok and not o.cached]
    return Level(concurrency=concurrency, requests=len(requests), ok=len(ok),
                 errors=sum(1 for o in outcomes if not o.ok), seconds=seconds,
                 tokens=sum((o.reply.eval_count or 0) for o in ok if o.reply is not None),
                 latencies=[o.latency for o in ok if o.latency is not None])


def requests_for_level(make: Callable[[int], Request], level: int, count: int, start: int) -> list[Request]:
    """``count`` distinct requests (a distinct key each, so none is answered from another's result)."""
    batch = []
    for i in range(count):
        request = make(start + i)
        request.key = f"sweep:{level}:{start + i}"
        batch.append(request)
    return batch


def per_level(level: int, waves: int = 3, minimum: int = 8) -> int:
    """Requests at one level: a few full waves, so the ramp-up and the tail weigh little."""
    return max(minimum, waves * level)


async def sweep_server(spec: ServerSpec, model: str, make: Callable[[int], Request], levels: list[int], *,
                       waves: int = 3, minimum: int = 8, tolerance: float = DEFAULT_TOLERANCE,
                       timeout: float | None = None, store: Store | None = None,
                       on_level: Callable[[Sweep, Level], None] | None = None) -> Sweep:
    """Every level in the order given; ``make(i)`` builds the i-th request."""
    sweep = Sweep(server=spec.label, model=model, spec=spec, tolerance=tolerance)
    sent = 0
    for level in levels:
        count = per_level(level, waves, minimum)
        batch = requests_for_level(make, level, count, sent)
        sent += count
        result = await run_level(spec, batch, level, store=store, timeout=timeout)
        sweep.levels.append(result)
        if on_level is not None:
            on_level(sweep, result)
    return sweep


def shares_hardware_with(spec: ServerSpec) -> tuple[str, int | None]:
    """Servers with the same key may share one GPU (the same host, and no GPU index or the same one):
    they are swept one after another. The others have hardware of their own."""
    return (urlsplit(spec.url).hostname or spec.url, spec.gpu)


async def sweep_fleet(specs: list[ServerSpec], model: str, make: Callable[[int], Request], levels: list[int],
                      **options: Any) -> list[Sweep]:
    """Every server's sweep, in the order of ``specs``: servers on hardware of their own at the same
    time (a 28-GPU fleet takes as long as one server, not 28 times as long), servers that may share a
    GPU (`shares_hardware_with`) one after another, so no sweep measures another's load. ``options``
    go to `sweep_server`; the requests of all sweeps are numbered apart (``make`` gets distinct i)."""
    groups: dict[tuple[str, int | None], list[int]] = {}
    for position, spec in enumerate(specs):
        groups.setdefault(shares_hardware_with(spec), []).append(position)
    stride = 1_000_000  # request numbers per server: distinct keys across the parallel sweeps
    results: dict[int, Sweep] = {}

    def numbered_from(base: int) -> Callable[[int], Request]:
        return lambda i: make(base + i)

    async def one_after_another(positions: list[int]) -> None:
        for position in positions:
            results[position] = await sweep_server(
                specs[position], model, numbered_from(position * stride), levels, **options)

    await asyncio.gather(*(one_after_another(positions) for positions in groups.values()))
    return [results[position] for position in range(len(specs))]
