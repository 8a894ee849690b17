"""The fleet: the servers a job runs on, probed once and shared by every run of an engine.

The fleet answers "who can do this?": which servers are live, which of them has a model (or, in
split mode, which models of a group), how many slots they offer, and how fast each has been (the
speeds outlive a run, so a second run starts informed). It also takes a failing server out of
service (benching) and re-probes it with a doubling back-off until it answers again. A server down
when the fleet starts is re-probed the same way while a run goes on, and joins when it answers; so
does one added to the config (`reconcile`, on SIGHUP), and one removed from it stops taking rows.
A run hears of a server joining through `on_join`. It knows nothing of queues, rows or the store:
that is a run's business (run.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..backends import Backend, ServerInfo, make_backend
from ..config import ServerSpec
from ..errors import NoServerError
from ..http import HttpClient, default_client
from ..limits import MAX_SLOTS_PER_SERVER
from ..requests import GROUP_SEP
from .costs import Speeds
from .servers import (
    FIRST_COOLDOWN,
    MAX_COOLDOWN,
    QUEUE_AHEAD,
    ServerState,
    default_slots,
    describe_probe_error,
    probe_one,
    resolve_model,
)
from .settings import EngineSettings

log = logging.getLogger("corral")

REPROBE_MAX_COOLDOWN = MAX_COOLDOWN  # seconds: the back-off between re-probes stops here


@dataclass(eq=False)
class Absent:
    """A server of the config that has not answered yet (down at the start, or added while down)."""

    spec: ServerSpec
    backend: Backend
    message: str                      # why, as `unreachable` lists it
    cooldown: float = FIRST_COOLDOWN
    task: asyncio.Task[None] | None = None


class Fleet:
    """The servers of an engine: ``start`` probes them, ``aclose`` closes their connections.

    Every backend sends through one `HttpClient`: the one given, or `corral.http.default_client()`
    (the lean client for plain http, aiohttp for the rest), which the fleet then closes itself."""

    def __init__(self, specs: list[ServerSpec], settings: EngineSettings, *,
                 http: HttpClient | None = None) -> None:
        if not specs:
            raise NoServerError("no servers given: pass --server URL, --config FILE or --local")
        self.specs = specs
        self.settings = settings
        self.servers: list[ServerState] = []
        self.unreachable: list[str] = []
        self.absent: list[Absent] = []   # down at the start (or added while down): re-probed in runs
        self.speeds = Speeds()  # learnt across runs: a second run starts informed
        self.closed = False
        self._given_http = http
        self._http: HttpClient | None = None
        self._serves: dict[tuple[int, str], bool] = {}
        self._key_kinds: dict[str, str] = {}
        self._served_choices: dict[tuple[int, str], list[str]] = {}
        self._reprobes: set[asyncio.Task[None]] = set()
        self._joined: list[Callable[[ServerState], None]] = []
        self._watching = False   # a run goes on: absent servers are re-probed

    # -- opening and closing ----------------------------------------------------------------------
    async def start(self) -> None:
        """Open the HTTP client and probe every server; unreachable ones are reported and skipped."""
        self.closed = False
        backends = self._open_http()
        try:
            probes = await asyncio.gather(*(probe_one(b, self.settings.probe_timeout) for b in backends))
            for spec, backend, result in zip(self.specs, backends, probes):
                if isinstance(result, ServerInfo):
                    self.servers.append(self._server(spec, backend, result))
                else:
                    message = describe_probe_error(spec, result)
                    self.unreachable.append(message)
                    self.absent.append(Absent(spec, backend, message))
        except BaseException:  # cancelled or a bug: the connections still close
            await self.aclose()
            raise
        if not self.servers:
            await self.aclose()
            raise NoServerError("no server answered: " + "; ".join(self.unreachable))
        for message in self.unreachable:
            log.warning("server %s; re-probing it while the job runs", message)

    def _server(self, spec: ServerSpec, backend: Backend, info: ServerInfo) -> ServerState:
        """A live server with its slots: ``concurrency``, else its own (`default_slots`); learnt up to
        ``adaptive_ceiling`` times that, never past MAX_SLOTS_PER_SERVER nor ``max_slots``; and the
        requests it is sent beyond them to wait in its queue (``queue_ahead``, `QUEUE_AHEAD`)."""
        slots = self.settings.concurrency or default_slots(spec, info)
        adaptive = self.settings.adaptive_slots and not self.settings.concurrency
        ceiling = max(slots, int(slots * self.settings.adaptive_ceiling)) if adaptive else slots
        if self.settings.max_slots:
            slots, ceiling = min(slots, self.settings.max_slots), min(ceiling, self.settings.max_slots)
        # ``--concurrency N`` (or a workers cap) means N in flight, no more; else one request waits
        # in the server's queue.
        capped = self.settings.concurrency or self.settings.max_slots
        ahead = 0 if capped else QUEUE_AHEAD if spec.queue_ahead is None else spec.queue_ahead
        return ServerState(spec=spec, backend=backend, info=info, slots=slots,
                           ceiling=min(ceiling, max(slots, MAX_SLOTS_PER_SERVER)), ahead=ahead)

    async def aclose(self) -> None:
        self.closed = True
        await self._close_http()

    def _open_http(self) -> list[Backend]:
        """The HTTP client every backend sends through, and the backends."""
        self._http = self._given_http or default_client()
        return [make_backend(spec, self._http) for spec in self.specs]

    async def _close_http(self) -> None:
        http, self._http = self._http, None
        if http is not None and http is not self._given_http:
            await http.aclose()

    # -- who serves what --------------------------------------------------------------------------
    def serves(self, server: ServerState, model: str) -> bool:
        """Does the server have this model (or, for a split-mode group, any model of it)?"""
        if server.removed:
            return False
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
        listed = ", ".join(repr(m) for m in missing)
        hint = " (pull it with `ollama pull MODEL` on each server)" if any(
            s.spec.api == "ollama" for s in self.servers) else ""
        raise NoServerError(f"model {listed} is not on any live server{hint}: {have}")

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

    def has_room(self, server: ServerState, lane: str) -> bool:
        """Is a slot free for this model (or, for a group, any model of it) on this server?"""
        if GROUP_SEP not in lane:
            return server.has_room(lane)
        return any(server.has_room(m) for m in self.served_choices(server, lane))

    @property
    def total_slots(self) -> int:
        return sum(s.slots for s in self.servers if not s.removed)

    # -- benching ---------------------------------------------------------------------------------
    def bench(self, server: ServerState) -> None:
        """Take a failing server out of service and re-probe it until it answers again."""
        server.bench()
        log.warning("benching %s after %s: %s (re-probing in %gs)", server.label, server.bench_reason,
                    server.last_error, server.cooldown)
        task = asyncio.create_task(self._reprobe(server))
        self._reprobes.add(task)
        task.add_done_callback(self._reprobes.discard)

    async def stop_reprobes(self) -> None:
        """Called as a run ends: a server benched during it stays benched (its re-probe stops), an
        absent one stays absent until the next run."""
        self._watching = False
        for absent in self.absent:
            absent.task = None
        tasks = list(self._reprobes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reprobes.clear()

    async def _reprobe(self, server: ServerState) -> None:
        while server.benched and not server.removed and not self.closed:
            await asyncio.sleep(server.cooldown)
            result = await probe_one(server.backend, self.settings.probe_timeout)
            if isinstance(result, ServerInfo):
                if server.removed:
                    return
                log.warning("server %s is back", server.label)
                server.unbench()
                return
            server.cooldown = min(server.cooldown * 2, REPROBE_MAX_COOLDOWN)

    # -- servers that come and go -----------------------------------------------------------------
    def on_join(self, callback: Callable[[ServerState], None]) -> Callable[[], None]:
        """Call ``callback(server)`` when a server joins (a run starts its slots); returns the undo."""
        self._joined.append(callback)
        return lambda: self._joined.remove(callback)

    def watch_absent(self) -> None:
        """Called as a run starts: re-probe the servers that have not answered yet."""
        self._watching = True
        for absent in self.absent:
            self._watch(absent)

    def _watch(self, absent: Absent) -> None:
        if absent.task is None and self._watching and not self.closed:
            absent.task = asyncio.create_task(self._await_absent(absent))
            self._reprobes.add(absent.task)
            absent.task.add_done_callback(self._reprobes.discard)

    async def _await_absent(self, absent: Absent) -> None:
        """Re-probe with the back-off of a benched server; join the fleet when it answers."""
        while absent in self.absent and not self.closed:
            await asyncio.sleep(absent.cooldown)
            result = await probe_one(absent.backend, self.settings.probe_timeout)
            if isinstance(result, ServerInfo):
                if absent in self.absent:
                    log.warning("server %s answered: it joins the run", absent.spec.label)
                    self._join(absent, result)
                return
            absent.cooldown = min(absent.cooldown * 2, REPROBE_MAX_COOLDOWN)

    def _join(self, absent: Absent, info: ServerInfo) -> None:
        self.absent.remove(absent)
        if absent.message in self.unreachable:
            self.unreachable.remove(absent.message)
        server = self._server(absent.spec, absent.backend, info)
        self.servers.append(server)
        for callback in list(self._joined):
            callback(server)

    async def reconcile(self, specs: list[ServerSpec]) -> tuple[list[str], list[str]]:
        """Make the fleet the servers of ``specs`` (the config re-read on SIGHUP): servers no longer
        there stop taking rows (their rows in flight finish), new ones are probed and join, or are
        re-probed until they answer. Returns the labels (added, removed)."""
        wanted = list(dict.fromkeys(specs))
        current = [s.spec for s in self.servers if not s.removed] + [a.spec for a in self.absent]
        removed = [spec for spec in current if spec not in wanted]
        added = [spec for spec in wanted if spec not in current]
        for spec in removed:
            self.remove(spec)
        await self.add(added)
        return [s.label for s in added], [s.label for s in removed]

    async def add(self, specs: list[ServerSpec]) -> None:
        """Probe new servers: those that answer join at once, the others are re-probed while a run
        goes on (as servers down at the start are)."""
        if specs and self._http is not None:
            backends = [make_backend(spec, self._http) for spec in specs]
            probes = await asyncio.gather(*(probe_one(b, self.settings.probe_timeout) for b in backends))
            for spec, backend, result in zip(specs, backends, probes):
                if isinstance(result, ServerInfo):
                    absent = Absent(spec, backend, "")
                    self.absent.append(absent)
                    self._join(absent, result)
                else:
                    absent = Absent(spec, backend, describe_probe_error(spec, result))
                    self.unreachable.append(absent.message)
                    self.absent.append(absent)
                    log.warning("server %s; re-probing it while the job runs", absent.message)
                    self._watch(absent)

    def remove(self, spec: ServerSpec) -> None:
        """Take a server out for good: it takes no more rows; those it holds finish there."""
        for server in self.servers:
            if server.spec == spec and not server.removed:
                server.removed = True
                server.available.clear()  # its slots wait, and end with the run
        for absent in [a for a in self.absent if a.spec == spec]:
            self.absent.remove(absent)
            if absent.message in self.unreachable:
                self.unreachable.remove(absent.message)
            if absent.task is not None:
                absent.task.cancel()
