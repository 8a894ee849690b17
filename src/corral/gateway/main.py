"""Start a gateway: the journal, the engine through the one job runner, the HTTP server, signals.

The engine is opened (every server probed) before the port is bound, so a gateway that answers
is one with a fleet. SIGTERM and SIGINT stop it cleanly; a kill -9 loses nothing but the rows in
flight (see service.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..config import ServerSpec
from ..engine import Engine, EngineSettings
from ..errors import UsageError
from ..runner import RunRecord, run_job
from ..store import Store
from .app import make_app
from .service import Gateway, GatewayOptions


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, so the port is known before serving (``--port 0`` picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def serve(servers: list[ServerSpec], settings: EngineSettings, options: GatewayOptions, *,
                host: str = "127.0.0.1", port: int = 8600,
                ready: Callable[[str], Any] = lambda url: None, argv: list[str] | None = None) -> None:
    """Run the gateway until SIGTERM/SIGINT (or until cancelled)."""
    options.state.mkdir(parents=True, exist_ok=True)
    store = Store(options.state / "journal.db")  # its lock: one gateway per state folder
    try:
        async def work(engine: Engine) -> None:
            gateway = Gateway(engine, store, options)
            runner = web.AppRunner(make_app(gateway), access_log=None)
            await runner.setup()
            try:
                sock = bind(host, port)
                await web.SockSite(runner, sock).start()
                bound = sock.getsockname()[1]
                ready(f"http://{host if ':' not in host else f'[{host}]'}:{bound}")
                await _until_stopped(gateway)
            finally:
                await runner.cleanup()
                gateway.close()

        await run_job(work, servers=servers, store=store, settings=settings, progress="none",
                      argv=argv, record=RunRecord(info={"job": "gateway"}))
    finally:
        store.close()


async def _until_stopped(gateway: Gateway) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    running = asyncio.create_task(gateway.run(), name="corral-gateway")
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((running, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (running, stopping):
            task.cancel()
        results = await asyncio.gather(running, stopping, return_exceptions=True)
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    failure = results[0]
    if isinstance(failure, BaseException) and not isinstance(failure, asyncio.CancelledError):
        raise failure
    print("corral: gateway stopped; unfinished batches go on at the next start", file=sys.stderr)
