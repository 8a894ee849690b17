"""`corral status`: how a job stands, from any shell, while it runs and after.

Reads the journal read-only (corral.status): it never takes the running job's lock and never slows
it down, so it can be called in a loop beside a day-long run.
"""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Any, Optional

import typer

from . import app

if TYPE_CHECKING:
    from ..status import JobStatus


@app.command("status")
def status_command(
    source: str = typer.Argument(..., metavar="OUTPUT|JOURNAL",
                                 help="The job's output (file, or --output-dir folder) or its journal (.corral.db)."),
    watch: bool = typer.Option(False, "--watch", "-w",
                               help="Refresh until the run ends (Ctrl-C stops watching, not the run)."),
    interval: float = typer.Option(2.0, "--interval", help="Seconds between refreshes with --watch."),
    as_json: bool = typer.Option(False, "--json",
                                 help="A JSON object (one line per refresh with --watch), for scripts."),
    run_id: Optional[int] = typer.Option(None, "--run", help="Which run of the journal [the latest]."),
) -> None:
    """Show a job's progress from another shell: done, failed, in flight, each server's rate and
    slots, the ETA, the last errors, and whether the writing process is alive.

    Exits 0 while the run goes on or once it completed, 1 when it failed, was interrupted or its
    process is gone.

    \b
    Example:
      corral status results.jsonl
      corral status results.jsonl.corral.db --watch --interval 5
      corral status answers/ --json | jq .eta_seconds
    """
    import orjson

    from ..status import RUNNING, journal_path, read_status
    from ..store import JournalReader

    path = journal_path(source)
    while True:
        with JournalReader(path) as journal:
            found = read_status(journal, run_id)
        if as_json:
            sys.stdout.write(orjson.dumps(found.as_dict()).decode() + "\n")
        else:
            if watch and sys.stdout.isatty():
                sys.stdout.write("\x1b[2J\x1b[H")  # clear the screen: a live view, not a scroll
            sys.stdout.write(render(found) + "\n")
        sys.stdout.flush()
        going = found.state == RUNNING and found.alive is not False
        if not watch or not going:
            break
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            raise typer.Exit(0) from None
    healthy = found.state in ("complete", "finished") or (found.state == RUNNING and found.alive is not False)
    if not healthy:
        raise typer.Exit(1)


def _clock(epoch: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "?"


def _span(seconds: Any) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}m{rest % 60:02d}s"


def render(found: JobStatus) -> str:
    """The status for people: a head line, the counts, a table of servers, the last errors."""
    s = found.snapshot
    who = f"pid {s['pid']} on {s.get('host', '?')}" if s.get("pid") else "writer unknown"
    alive = {True: "alive", False: "gone", None: "cannot tell from this host"}[found.alive]
    age = f", updated {_span(found.age)} ago" if found.age is not None else ""
    lines = [f"corral: {found.journal} run {found.run_id}: {found.summary}",
             f"  {who} ({alive}), started {_clock(s.get('started_at'))}{age}"]
    if "done" in s:
        total = f"/{s['total']}" if s.get("total") is not None else ""
        lines.append(f"  {s['done']}{total} done, {s.get('failed', 0)} failed, {s.get('cached', 0)} cached, "
                     f"{s.get('in_flight', 0)} in flight, {s.get('retries', 0)} retries, "
                     f"{s.get('rate', 0):.1f} req/s, ETA {_span(s.get('eta_seconds'))}")
    rows = found.journal_rows
    lines.append(f"  journal: {rows.get('ok', 0)} ok and {rows.get('failed', 0)} failed rows of this run")
    servers = s.get("servers") or []
    if servers:
        width = max(len("server"), *(len(x["label"]) for x in servers))
        lines.append(f"  {'server':{width}}  in flight/slots  requests      ok  errors   req/s  state")
        for x in servers:
            state = "benched" if x.get("benched") else "ok"
            if x.get("queued_ahead"):  # in flight beyond its slots, waiting in the server's queue
                state += f", {x['queued_ahead']} of those in flight queued ahead"
            if x.get("last_error"):
                state += f" (last error: {x['last_error'][:80]})"
            lines.append(f"  {x['label']:{width}}  {x['in_flight']:>7}/{x['slots']:<7}  {x['requests']:>8}  "
                         f"{x['ok']:>6}  {x['errors']:>6}  {x['rate']:>6.1f}  {state}")
    errors = s.get("last_errors") or []
    if errors:
        lines.append("  last errors:")
        for e in errors:
            where = f"line {e['line']}" if e.get("line") is not None else f"id {e.get('id')}"
            lines.append(f"    {where} ({e.get('kind') or 'error'} on {e.get('server') or '-'}): "
                         f"{(e.get('error') or '')[:160]}")
    return "\n".join(lines)
