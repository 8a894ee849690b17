"""The engine: a fleet of servers (fleet.py) and, on it, one run after another (run.py).

``Engine`` is the one front the rest of corral uses: ``async with Engine(specs, store, settings)``
probes the servers, ``engine.run(requests, on_outcome)`` sends a stream of requests over them and
hands back every outcome in input order. Settings hold for every run; what may differ between runs
(the answer check, the read-ahead window) is passed to ``run``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ..config import ServerSpec
from ..http import HttpClient
from ..results import Outcome
from ..store import Store
from .costs import Speeds
from .fleet import Fleet
from .run import Requests, Run, Total, Validator
from .servers import ServerState
from .settings import EngineSettings, JobStats


class Engine:
    """Probe servers, then run streams of requests over them. Use as ``async with Engine(...)``."""

    def __init__(self, servers: list[ServerSpec], store: Store | None = None,
                 settings: EngineSettings | None = None, *, http: HttpClient | None = None) -> None:
        self.settings = settings or EngineSettings()
        self.fleet = Fleet(servers, self.settings, http=http)
        self.store = store if store is not None else Store(None)
        self.stats = JobStats()  # the current (or last) run's counters

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the HTTP client and probe every server; unreachable ones are reported and skipped."""
        await self.fleet.start()

    async def aclose(self) -> None:
        await self.fleet.aclose()

    async def run(self, requests: Requests, on_outcome: Callable[[Outcome], None],
                  total: Total = None, *, validate: Validator | None = None,
                  window: int | None = None, ordered: bool = True,
                  ready: Callable[[], bool] | None = None) -> JobStats:
        """Run every request; ``on_outcome`` receives one Outcome per request, in input order.

        ``validate(request, reply)`` returns a message when an answer is not what was asked (it is
        re-asked up to ``settings.content_retries`` times); by default a request asking for JSON
        must get JSON. ``window``: rows read ahead of the oldest unfinished one (by default 16 per
        slot, at least 2048). ``requests`` may be an async stream of chunks of requests, and
        ``ordered=False`` hands outcomes on as they finish (see `Run`). ``total`` may be a function,
        asked again as rows are read, for a job that learns its size as it reads. ``ready()``: False holds the
        reading of the next row until outcomes are passed on. Not re-entrant: one run at a time per
        engine."""
        run = Run(self.fleet, self.store, self.settings, on_outcome, total=total, validate=validate,
                  window=window, ordered=ordered, ready=ready)
        self.stats = run.stats
        return await run.execute(requests)

    # -- the fleet, as the rest of corral asks about it -------------------------------------------
    @property
    def specs(self) -> list[ServerSpec]:
        return self.fleet.specs

    @property
    def servers(self) -> list[ServerState]:
        return self.fleet.servers

    @property
    def unreachable(self) -> list[str]:
        return self.fleet.unreachable

    @property
    def speeds(self) -> Speeds:
        return self.fleet.speeds

    @property
    def total_slots(self) -> int:
        return self.fleet.total_slots

    def serves(self, server: ServerState, model: str) -> bool:
        return self.fleet.serves(server, model)

    def check_models(self, models: Iterable[str]) -> None:
        self.fleet.check_models(models)

    def key_kind(self, model: str) -> str:
        return self.fleet.key_kind(model)

    def served_choices(self, server: ServerState, lane: str) -> list[str]:
        return self.fleet.served_choices(server, lane)
