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
from collections.abc import Callable

from .config import ServerSpec
from .engine import Engine

log = logging.getLogger("corral")

#: Reads the servers of the config again (raises when the file cannot be read or parsed).
ServerReader = Callable[[], list[ServerSpec]]


class ConfigReload:
    """``async with ConfigReload(engine, read):`` around a job: on SIGHUP, ``read()`` and make the fleet
    those servers (`Fleet.reconcile`), logging one line that says what changed."""

    def __init__(self, engine: Engine, read: ServerReader | None, where: str = "the config") -> None:
        self.engine = engine
        self.read = read
        self.where = where
        self.reloads: list[asyncio.Task[str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> ConfigReload:
        sighup = getattr(signal, "SIGHUP", None)
        if self.read is None or sighup is None or threading.current_thread() is not threading.main_thread():
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
        assert self.read is not None
        try:
            specs = self.read()
            if not specs:
                raise ValueError("it lists no servers")
        except Exception as exc:  # noqa: BLE001 - a bad edit is reported, the run goes on
            line = f"SIGHUP: {self.where} not reloaded, the servers stay as they were: {exc}"
            log.error("%s", line)
            return line
        added, removed = await self.engine.fleet.reconcile(specs)
        changes = [f"added {', '.join(added)}" if added else "", f"removed {', '.join(removed)}" if removed else ""]
        line = (f"SIGHUP: {self.where} reloaded: " + "; ".join(c for c in changes if c)
                if added or removed else f"SIGHUP: {self.where} reloaded: no change in servers")
        log.warning("%s", line)
        return line
