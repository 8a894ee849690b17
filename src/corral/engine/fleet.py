"""The fleet: the servers a job runs on, probed once and shared by every run of an engine.

The fleet answers "who can do this?": which servers are live, which of them has a model (or, in
split mode, which models of a group), how many slots they offer, and how fast each has been (the
speeds outlive a run, so a second run starts informed). It also takes a failing server out of
service (benching) and re-probes it with a doubling back-off until it answers again. It knows
nothing of queues, rows or the store: that is a run's business (run.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from ..backends import Backend, ServerInfo, make_backend
from ..config import ServerSpec
from ..errors import NoServerError
from ..http import HttpClient, default_client
from ..limits import MAX_SLOTS_PER_SERVER
from ..requests import GROUP_SEP
from .costs import Speeds
from .servers import QUEUE_AHEAD, ServerState, default_slots, describe_probe_error, probe_one, resolve_model
from .settings import EngineSettings

log = logging.getLogger("corral")

REPROBE_MAX_COOLDOWN = 60.0  # seconds: the back-off between re-probes of a benched server stops here


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
        self.speeds = Speeds()  # learnt across runs: a second run starts informed
        self.closed = False
        self._given_http = http
        self._http: HttpClient | None = None
        self._serves: dict[tuple[int, str], bool] = {}
        self._key_kinds: dict[str, str] = {}
        self._served_choices: dict[tuple[int, str], list[str]] = {}
        self._reprobes: set[asyncio.Task[None]] = set()

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
                    self.unreachable.append(describe_probe_error(spec, result))
        except BaseException:  # cancelled or a bug: the connections still close
            await self.aclose()
            raise
        if not self.servers:
            await self.aclose()
            raise NoServerError("no server answered: " + "; ".join(self.unreachable))
        for message in self.unreachable:
            log.warning("skipping server %s", message)

    def _server(self, spec: ServerSpec, backend: Backend, info: ServerInfo) -> ServerState:
        """A live server with its slots: ``concurrency``, else its own (`default_slots`); learnt up to
        ``adaptive_ceiling`` times that, never past MAX_SLOTS_PER_SERVER; and the requests it is
        sent beyond them to wait in its queue (``queue_ahead``, `QUEUE_AHEAD`)."""
        slots = self.settings.concurrency or default_slots(spec, info)
        adaptive = self.settings.adaptive_slots and not self.settings.concurrency
        ceiling = max(slots, int(slots * self.settings.adaptive_ceiling)) if adaptive else slots
        # ``--concurrency N`` means N in flight, no more; else one request waits in its queue.
        ahead = 0 if self.settings.concurrency else QUEUE_AHEAD if spec.queue_ahead is None else spec.queue_ahead
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
        return sum(s.slots for s in self.servers)

    # -- benching ---------------------------------------------------------------------------------
    def bench(self, server: ServerState) -> None:
        """Take a failing server out of service and re-probe it until it answers again."""
        server.bench()
        log.warning("benching %s after %d failures in a row: %s", server.label,
                    server.consecutive_failures, server.last_error)
        task = asyncio.create_task(self._reprobe(server))
        self._reprobes.add(task)
        task.add_done_callback(self._reprobes.discard)

    async def stop_reprobes(self) -> None:
        """Called as a run ends: a server benched during it stays benched (its re-probe stops)."""
        tasks = list(self._reprobes)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._reprobes.clear()

    async def _reprobe(self, server: ServerState) -> None:
        while server.benched and not self.closed:
            await asyncio.sleep(server.cooldown)
            result = await probe_one(server.backend, self.settings.probe_timeout)
            if isinstance(result, ServerInfo):
                log.warning("server %s is back", server.label)
                server.unbench()
                return
            server.cooldown = min(server.cooldown * 2, REPROBE_MAX_COOLDOWN)
