"""Progress while a job runs, and the summary after: a live bar on a terminal or in a Jupyter
notebook (`notebook.py`), log lines elsewhere.

The display only reads the engine's counters on a timer; the engine never waits for it.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

from .engine import Engine, JobStats
from .manifest import server_cost
from .notebook import NotebookProgress, in_kernel

if TYPE_CHECKING:  # rich is imported where a bar or a table is drawn: log lines need none of it
    from rich.console import Group
    from rich.live import Live
    from rich.table import Table

    from .engine.rates import RateLimiter


def _rate(stats: JobStats) -> float:
    return stats.rate


def _eta(stats: JobStats) -> str:
    """The engine's estimate (`JobStats.eta_seconds`: remaining estimated cost over cost per second)."""
    return format_eta(stats.eta_seconds())


def format_eta(left: float | None) -> str:
    if left is None:
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(left)) if left >= 60 else f"{left:.0f}s"


#: (done, total or None, a detail line) for the progress bar and the log lines.
Counter = Callable[[], tuple[int, int | None, str]]


def skipping(s: JobStats) -> str | None:
    """While a resume passes over rows already in the journal (nothing sent yet), say so: a resume
    of a million rows otherwise looks like a hang before its first request."""
    if s.cached and not s.sent:
        return f"skipping rows already in the journal: {s.cached:,} so far"
    return None


def _request_counts(s: JobStats) -> tuple[int, int | None, str]:
    return s.done, s.total, skipping(s) or (f"{s.failed} failed · {s.cached} cached · "
                                            f"{s.retries} retries · {_rate(s):.1f} req/s · ETA {_eta(s)}")


def status_line(engine: Engine, counter: Counter | None = None) -> str:
    s = engine.stats
    servers = "  ".join(
        f"{srv.label}{' [removed]' if srv.removed else ' [benched]' if srv.benched else ''} "
        f"{srv.busy_text()}, {srv.stats.ok} ok"
        for srv in engine.servers
    )
    if counter is not None:
        done, total, detail = counter()
        return f"corral: {done}{f'/{total}' if total is not None else ''} done · {detail} | {servers}"
    of_total = f"/{s.total}" if s.total is not None else ""
    if skipping(s):
        return f"corral: {s.done}{of_total} done, {skipping(s)} | {servers}"
    return (f"corral: {s.done}{of_total} done, {s.failed} failed, {s.cached} cached, {s.retries} retries, "
            f"{_rate(s):.1f} req/s, ETA {_eta(s)} | {servers}")


class ProgressDisplay:
    """Use as ``async with ProgressDisplay(engine, mode):`` around ``engine.run(...)``."""

    def __init__(self, engine: Engine, mode: str = "auto", stream: TextIO | None = None,
                 interval: float | None = None, counter: Counter | None = None) -> None:
        self.engine = engine
        # What the bar counts: the engine's requests, unless the job counts something else (texts).
        self._custom_counter = counter
        self.counter = counter or (lambda: _request_counts(engine.stats))
        self.stream = stream or sys.stderr
        if mode == "auto":
            mode = "bar" if self.stream.isatty() else "notebook" if in_kernel() else "log"
        self.mode = mode
        self.interval = interval or float(os.environ.get("CORRAL_LOG_INTERVAL", "10"))
        self._task: asyncio.Task[None] | None = None
        self._live: Live | None = None
        self._notebook: NotebookProgress | None = None

    async def __aenter__(self) -> ProgressDisplay:
        if self.mode == "bar":
            from rich.console import Console
            from rich.live import Live
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            # Rows: the detail line has the engine's ETA (by estimated cost); other counts, rich's.
            self._progress = Progress(
                TextColumn("[bold]corral"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"), *((TimeRemainingColumn(),) if self._custom_counter else ()),
                console=Console(file=self.stream), transient=False,
            )
            self._bar = self._progress.add_task("run", total=None, detail="")
            self._live = Live(self._render(), console=Console(file=self.stream), refresh_per_second=4,
                              transient=True)
            self._live.start()
            self._task = asyncio.create_task(self._tick(0.25))
        elif self.mode == "log":
            self._task = asyncio.create_task(self._tick(self.interval))
        elif self.mode == "notebook":
            self._notebook = NotebookProgress(self.engine, self.counter)
            self._notebook.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._notebook is not None:
            await self._notebook.stop(exc[1] if isinstance(exc[1], BaseException) else None)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._live is not None:
            self._live.update(self._render())
            self._live.stop()

    def _render(self) -> Group:
        from rich.console import Group
        from rich.table import Table

        s = self.engine.stats
        done, total, detail = self.counter()
        self._progress.update(self._bar, total=total, completed=done, detail=detail)
        table = Table(box=None, pad_edge=False, show_header=True, header_style="dim")
        for column in ("server", "in flight", "done", "errors", "req/s", "tok/s"):
            table.add_column(column, justify="right" if column != "server" else "left")
        elapsed = max(s.elapsed, 1e-9)
        for srv in self.engine.servers:
            name = srv.label + (" [red](benched)[/red]" if srv.benched else "")
            table.add_row(name, srv.busy_text().replace(" busy", ""), str(srv.stats.ok), str(srv.stats.errors),
                          f"{srv.stats.ok / elapsed:.1f}", f"{srv.stats.completion_tokens / elapsed:.0f}")
        return Group(self._progress, table)

    async def _tick(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if self._live is not None:
                self._live.update(self._render())
            else:
                print(status_line(self.engine, self._custom_counter), file=self.stream, flush=True)


def summary_table(engine: Engine) -> Table:
    """Per server: requests, errors, hedged and cancelled copies, tokens and speed; then the totals.

    ``requests`` counts every copy sent: ``ok + errors + cancelled`` of them ended (a hedged row's
    losing copy is cancelled, not failed), and ``hedged`` says how many were tail copies of rows a
    slower server held."""
    from rich.table import Table

    s = engine.stats
    elapsed = max(s.elapsed, 1e-9)
    table = Table(title=f"corral: {s.ok} ok, {s.failed} failed, {s.cached} cached "
                        f"in {s.elapsed:.1f}s ({_rate(s):.1f} req/s)")
    # A cost column only when the config gives prices (price_in / price_out per million tokens).
    priced = any(srv.spec.price_in is not None or srv.spec.price_out is not None for srv in engine.servers)
    for column in ("server", "requests", "ok", "errors", "hedged", "cancelled", "prompt tok", "output tok",
                   "output tok/s",
                   "gen tok/s", *(("cost",) if priced else ())):
        table.add_column(column, justify="left" if column == "server" else "right")
    for srv in engine.servers:
        st = srv.stats
        gen = f"{st.completion_tokens / (st.eval_ns / 1e9):.1f}" if st.eval_ns else "-"
        cost = server_cost(srv.spec, st.prompt_tokens, st.completion_tokens).get("cost")
        table.add_row(srv.label, str(st.requests), str(st.ok), str(st.errors), str(st.hedges), str(st.cancelled),
                      str(st.prompt_tokens),
                      str(st.completion_tokens), f"{st.completion_tokens / elapsed:.1f}", gen,
                      *((f"{cost:.4f}" if cost is not None else "-",) if priced else ()))
    limited = [rate_limit_line(srv.label, srv.rates) for srv in engine.servers
               if srv.rates is not None and (srv.rates.limits or srv.rates.pauses)]
    if limited:
        table.caption = "\n".join(limited)
    return table


def rate_limit_line(label: str, limiter: RateLimiter) -> str:
    """One server's rate limiting in words: its budgets, how often they held a slot back, and the
    busiest minute (so a slow run says it was the limit, not the server)."""
    budgets = ", ".join(f"{value:,} {name}" for name, value in (("rpm", limiter.rpm), ("tpm", limiter.tpm))
                        if value)
    said = f"; paused {limiter.pauses}x on the server's word" if limiter.pauses else ""
    return (f"{label}: {budgets or 'no configured limit'}: {limiter.admitted:,} started, held back "
            f"{limiter.held:,}x, busiest minute {limiter.peak_requests:,} requests / "
            f"{limiter.peak_tokens:,} tokens{said}")
