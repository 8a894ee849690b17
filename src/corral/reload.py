"""SIGHUP re-reads the config file while a job runs: servers added join, servers removed stop
taking rows, without restarting the run (a day-long job should not lose its place to a new GPU).

A config that fails to parse is logged and ignored: a half-edited file must never end a run. The
handler is installed only where a signal handler can be (the main thread, on POSIX), and the
previous disposition of SIGHUP comes back when the job ends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass

from .config import ServerSpec, load_config
from .engine import Engine

log = logging.getLogger("corral")


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """The config file a job's servers came from, read again on SIGHUP."""

    path: str

    def servers(self) -> list[ServerSpec]:
        """Its servers now (raises, naming the file and line, when it cannot be read or parsed)."""
        return list(load_config(self.path).servers)


class ConfigReload:
    """``async with ConfigReload(engine, config):`` around a job: on SIGHUP, read the config again
    and make the fleet its servers (`Fleet.reconcile`), logging one line that says what changed."""

    def __init__(self, engine: Engine, config: ConfigFile | None) -> None:
        self.engine = engine
        self.config = config
        self.reloads: list[asyncio.Task[str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> ConfigReload:
        sighup = getattr(signal, "SIGHUP", None)
        if self.config is None or sighup is None or threading.current_thread() is not threading.main_thread():
            return self
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(sighup, self._on_signal)
        except (NotImplementedError, RuntimeError, ValueError):  # a loop or platform without them
            return self
        self._loop = loop
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.remove_signal_handler(signal.SIGHUP)
            self._loop = None
        for task in self.reloads:
            task.cancel()

    def _on_signal(self) -> None:
        task = asyncio.get_running_loop().create_task(self.apply())
        self.reloads.append(task)
        task.add_done_callback(self.reloads.remove)

    async def apply(self) -> str:
        """Re-read and apply; returns the line it logged."""
        assert self.config is not None
        where = self.config.path
        try:
            specs = self.config.servers()
            if not specs:
                raise ValueError("it lists no servers")
        except Exception as exc:  # noqa: BLE001 - a bad edit is reported, the run goes on
            line = f"SIGHUP: {where} not reloaded, the servers stay as they were: {exc}"
            log.error("%s", line)
            return line
        added, removed = await self.engine.fleet.reconcile(specs)
        changes = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else ""]
        line = (f"SIGHUP: {where} reloaded: " + "; ".join(c for c in changes if c)
                if added or removed else f"SIGHUP: {where} reloaded: no change in servers")
        log.warning("%s", line)
        return line
