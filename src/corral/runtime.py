"""Where corral's event loop comes from: uvloop when it is installed, else asyncio's own.

uvloop (libuv under asyncio's API) roughly halves the client's CPU per request, which is the
bottleneck when servers answer fast; everything works the same on the standard loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run, on the fastest loop available."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion from sync code, whether or not a loop is already running.

    In Jupyter a loop is already running in the caller's thread, so the coroutine runs on a private
    loop in a helper thread: notebooks need no nest_asyncio."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run(awaitable)  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="corral") as pool:
        return pool.submit(run, awaitable).result()  # type: ignore[arg-type]
