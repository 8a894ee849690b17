"""Where corral's event loop comes from: uvloop when it is installed, else asyncio's own.

uvloop (libuv under asyncio's API) roughly halves the client's CPU per request, which is the
bottleneck when servers answer fast; everything works the same on the standard loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Awaitable, Coroutine
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: After an interrupt, how long the caller waits for the job's own clean-up (in-flight requests
#: cancelled, the journal committed and closed, the run marked interrupted) before re-raising; a
#: clean-up that takes longer goes on in the background (measured: well under this; a second
#: interrupt stops the wait at once).
CLEANUP_SECONDS = 1.0


def loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Like asyncio.run, on the fastest loop available.

    In the main thread of a script, Ctrl-C cancels the job (so it cleans up, journal kept) and then
    raises KeyboardInterrupt: asyncio.Runner's own SIGINT handling."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(coro)


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion from sync code, whether or not a loop is already running.

    In Jupyter a loop is already running in the caller's thread, so the coroutine runs on a private
    loop in a helper thread: notebooks need no nest_asyncio. The stop button's KeyboardInterrupt
    lands in the caller's thread, which only waits; it cancels the job on the helper's loop, gives
    its clean-up up to `CLEANUP_SECONDS`, and is raised on, instead of the job running to its end."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run(awaitable)  # type: ignore[arg-type]
    return _Helper(awaitable).result()  # type: ignore[arg-type]


class _Helper(Generic[T]):
    """One coroutine on its own loop in a daemon thread, cancellable from the waiting thread."""

    def __init__(self, coro: Coroutine[Any, Any, T]) -> None:
        self._coro = coro
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._cancelled = False
        self._value: T | None = None
        self._error: BaseException | None = None
        # Waited on instead of Thread.join: on Python 3.11 a join interrupted by KeyboardInterrupt
        # marks the still-running thread as stopped, so a second join would not wait for it.
        self._done = threading.Event()
        # The caller's context variables go along (ipykernel routes a thread's output by them).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._main,), name="corral", daemon=True)
        self._thread.start()

    def result(self) -> T:
        try:
            self._done.wait()
        except KeyboardInterrupt:
            self.cancel()
            self._done.wait(CLEANUP_SECONDS)
            raise
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._loop is not None and self._task is not None:
                self._loop.call_soon_threadsafe(self._task.cancel)

    def _main(self) -> None:
        try:
            self._value = run(self._guarded())
        except BaseException as exc:  # handed to the waiting thread
            self._error = exc
        finally:
            self._done.set()

    async def _guarded(self) -> T:
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            if self._cancelled:
                self._coro.close()
                raise asyncio.CancelledError
        return await self._coro
