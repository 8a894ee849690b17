"""Progress inside a Jupyter kernel: one bar in the cell's output, redrawn in place.

A kernel's stderr is no terminal, so without this a job there prints a log line every 10 s; rich's
live display needs ipywidgets in Jupyter. IPython's display handles need nothing more than the
kernel: ``display(..., display_id=True)`` draws once and ``handle.update(...)`` redraws that output.
The job runs on a helper thread in a notebook (see `runtime.run_sync`); ipykernel sends a thread's
display to the cell that started it by the context variables the helper inherits.
"""

from __future__ import annotations

import asyncio
import html
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .engine import Engine

__all__ = ["NotebookProgress", "ProgressView", "in_kernel"]


def in_kernel() -> bool:
    """True inside a Jupyter (ipykernel) kernel. IPython is never imported here: it is in
    ``sys.modules`` already when a kernel runs this, and a script pays nothing."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return getattr(shell, "kernel", None) is not None


@dataclass(frozen=True, slots=True)
class ServerView:
    label: str
    in_flight: int
    limit: int
    ok: int
    errors: int
    benched: bool


@dataclass(frozen=True, slots=True)
class ProgressView:
    """What the bar shows at one moment; Jupyter renders it as HTML, a plain front as its text."""

    done: int
    total: int | None
    detail: str
    servers: tuple[ServerView, ...]
    state: str = "running"  # running, finished or stopped

    def _repr_html_(self) -> str:
        bar = (f'<progress value="{self.done}" max="{self.total}" style="width:24em"></progress>'
               if self.total else '<progress style="width:24em"></progress>')
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(s.label)}{' (benched)' if s.benched else ''}</td>"
            f"<td>{s.in_flight}/{s.limit}</td><td>{s.ok}</td><td>{s.errors}</td></tr>" for s in self.servers)
        return (f"<div><b>corral</b> {bar} {html.escape(self._count())} · {html.escape(self.detail)}"
                f"{' · ' + self.state if self.state != 'running' else ''}"
                "<table style='font-size:smaller'><tr><th style='text-align:left'>server</th><th>in flight</th>"
                f"<th>ok</th><th>errors</th></tr>{rows}</table></div>")

    def __repr__(self) -> str:
        servers = "  ".join(f"{s.label}{' [benched]' if s.benched else ''} {s.in_flight}/{s.limit} busy, {s.ok} ok"
                            for s in self.servers)
        state = f" · {self.state}" if self.state != "running" else ""
        return f"corral: {self._count()} done · {self.detail}{state} | {servers}"

    def _count(self) -> str:
        return f"{self.done}/{self.total}" if self.total is not None else str(self.done)


def view(engine: Engine, counter: Callable[[], tuple[int, int | None, str]], state: str = "running") -> ProgressView:
    done, total, detail = counter()
    return ProgressView(done, total, detail, tuple(
        ServerView(s.label, s.in_flight, s.limit, s.stats.ok, s.stats.errors, s.benched) for s in engine.servers),
        state)


class NotebookProgress:
    """``start()`` draws the bar and redraws it every ``every`` seconds (only when it changed);
    ``stop(exc)`` draws the last figures, saying whether the job finished or was stopped."""

    def __init__(self, engine: Engine, counter: Callable[[], tuple[int, int | None, str]],
                 every: float = 0.5) -> None:
        self.engine = engine
        self.counter = counter
        self.every = every
        self._handle: Any = None
        self._shown: ProgressView | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        from IPython.display import display

        self._shown = view(self.engine, self.counter)
        self._handle = display(self._shown, display_id=True)
        self._task = asyncio.create_task(self._redraw())

    async def stop(self, exc: BaseException | None = None) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        stopped = isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt))
        self._draw(view(self.engine, self.counter, "stopped" if stopped else "finished"))

    async def _redraw(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            self._draw(view(self.engine, self.counter))

    def _draw(self, shown: ProgressView) -> None:
        if self._handle is not None and shown != self._shown:
            self._shown = shown
            self._handle.update(shown)
