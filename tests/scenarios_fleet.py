"""Issue 18's fleet scenarios (items 1 and 3): a server down at the start that comes up, a server
answering only 503 beside a good one, and how closely the published progress follows the rows
really answered. Each checks its invariants and returns figures; ``benchmarks/faults.py`` prints
them (scenarios 41-43), the tests run them at CI size.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.conftest import exactly_once, journal_rows, read_jsonl, run_corral, start_corral, wait_for, write_prompts
from tests.fakes import FakeServer

Figures = dict[str, Any]


def _label(server: FakeServer) -> str:
    return server.url.removeprefix("http://")


# ---- 41. a server down when the run starts, up a moment later ---------------------------------

def down_at_start(work: Path, rows: int = 2000, latency: float = 0.02) -> Figures:
    """Two servers, one of them down when the job starts; it comes up once the first rows are
    journaled. It must be re-probed (as a benched server is) and take rows; nothing lost or doubled."""
    good = FakeServer(slots=2, latency=latency).start()
    late = FakeServer(slots=2, latency=latency).start()
    late.kill()
    try:
        write_prompts(work / "p.jsonl", rows)
        args = ["run", "p.jsonl", "--server", good.url, "--server", late.url, "-m", "llama3.2",
                "-o", "out.jsonl", "--progress", "none", "-j", "2"]
        started = time.monotonic()
        proc = start_corral(args, work)
        db = work / "out.jsonl.corral.db"
        wait_for(lambda: journal_rows(db) >= 1 or proc.poll() is not None, 120, "the first rows")
        late.revive()
        _, err = proc.communicate(timeout=600)
        seconds = time.monotonic() - started
        assert proc.returncode == 0, err[-3000:]
        out = read_jsonl(work / "out.jsonl")
        lost, duplicated = exactly_once(out, rows)
        served = Counter(r["server"] for r in out)
        figures = {"rows": rows, "lost": lost, "duplicated": duplicated, "seconds": round(seconds, 1),
                   "by_good": served[_label(good)], "by_late": served[_label(late)]}
        assert not lost and not duplicated and figures["by_late"] > 0, (figures, err[-2000:])
        assert "joins the run" in err, err[-2000:]
        figures["setup"] = (f"{rows:,} rows on two servers (2 slots x {latency * 1000:.0f} ms); one is down "
                            "at the start and comes up after the first row")
        figures["result"] = (f"it joined on its re-probe and answered {figures['by_late']:,} rows "
                             f"(the other {figures['by_good']:,}); nothing lost or doubled, {seconds:.1f}s")
        return figures
    finally:
        good.stop()
        late.stop()


# ---- 42. a server that answers 503 to everything, beside a good one ---------------------------

def busy_beside_good(work: Path, rows: int = 1300, latency: float = 0.02, alone: int = 20) -> Figures:
    """A proxy with no backend answers 503 at once to every request. Beside a good server it must
    be benched after a few answers (not take most of the requests), and the job must take about as
    long as on the good server alone; alone, with --max-attempts 1 --max-outage 2, its rows must
    fail within seconds (the outage counts from the first busy answer)."""
    good = FakeServer(slots=4, latency=latency).start()
    busy = FakeServer(slots=4).start()
    busy.fail_rate = 1.0
    try:
        write_prompts(work / "p.jsonl", rows)
        base = ["run", "p.jsonl", "-m", "llama3.2", "--progress", "none", "--no-hedge"]
        code, _, err, good_alone = run_corral([*base, "--server", good.url, "-o", "alone.jsonl"], work)
        assert code == 0, err[-2000:]
        good.reset_stats()
        code, _, err, beside = run_corral(
            [*base, "--server", good.url, "--server", busy.url, "-o", "both.jsonl"], work)
        assert code == 0, err[-2000:]
        out = read_jsonl(work / "both.jsonl")
        lost, duplicated = exactly_once(out, rows)
        taken = busy.status_counts[503]
        assert not lost and not duplicated and all(r["success"] for r in out), (lost, duplicated)
        assert "busy answers in a row" in err, err[-2000:]
        assert taken < 0.05 * (good.completed + taken), (taken, good.completed)

        write_prompts(work / "few.jsonl", alone)
        busy.reset_stats()
        code, _, err, alone_seconds = run_corral(
            ["run", "few.jsonl", "-m", "llama3.2", "--server", busy.url, "-o", "few.out.jsonl",
             "--max-attempts", "1", "--max-outage", "2", "--progress", "none"], work)
        failed = read_jsonl(work / "few.out.jsonl")
        assert code == 1 and len(failed) == alone and not any(r["success"] for r in failed), err[-2000:]
        figures = {"rows": rows, "busy_requests": taken, "good_requests": good.completed,
                   "good_alone_seconds": round(good_alone, 1), "beside_seconds": round(beside, 1),
                   "ratio": round(beside / good_alone, 2), "alone_rows": alone,
                   "alone_seconds": round(alone_seconds, 1), "alone_requests": busy.status_counts[503]}
        figures["setup"] = (f"{rows:,} rows on a good server (4 slots x {latency * 1000:.0f} ms) beside one "
                            f"answering 503 to everything; then that one alone, {alone} rows, "
                            "--max-attempts 1 --max-outage 2")
        figures["result"] = (f"the 503 server took {taken} of {taken + good.completed:,} requests; "
                             f"{beside:.1f}s vs {good_alone:.1f}s on the good server alone "
                             f"({figures['ratio']}x); alone: {alone} rows failed in {alone_seconds:.1f}s "
                             f"after {figures['alone_requests']} requests")
        return figures
    finally:
        good.stop()
        busy.stop()


# ---- 43. progress accuracy ------------------------------------------------------------------

def _ended_at(db: Path, rows: int) -> list[float]:
    """When each input row ended, by its position (the fake answers "echo: prompt N")."""
    con = sqlite3.connect(db)
    try:
        found = con.execute("SELECT response, finished_at FROM results").fetchall()
    finally:
        con.close()
    ended = [float("inf")] * rows
    for response, finished_at in found:
        ended[int(response.rsplit(" ", 1)[1])] = finished_at
    return ended


def _prefix_ended(ended: list[float], at: float) -> int:
    """Rows a count in input order had passed on at ``at``: the prefix of rows all ended by then."""
    for position, finished in enumerate(ended):
        if finished > at:
            return position
    return len(ended)


def progress_accuracy(work: Path, rows: int = 2000, slow_rows: int = 4, slow: float = 4.0,
                      latency: float = 0.01, read_every: float = 0.05) -> Figures:
    """The first ``slow_rows`` rows are slow (half the slots hold them while the others go on), so
    rows end far out of input order (as with longest-first sending). A reader samples the published
    status and the journal's count: the published ``done`` must follow the journaled rows (by what
    one snapshot interval of answers holds), never the in-order count, which stayed below
    ``slow_rows`` until the slow rows ended."""
    from corral.errors import UsageError
    from corral.status import read_status
    from corral.store import JournalReader

    def latency_of(body: dict[str, Any]) -> float:
        text = json.dumps(body)
        return slow if any(f'"prompt {i}"' in text for i in range(slow_rows)) else latency

    server = FakeServer(slots=8, latency=latency_of).start()
    samples: list[tuple[float, int, int]] = []   # (wall time, published done, rows journaled)
    stop = threading.Event()
    db = work / "out.jsonl.corral.db"

    def poll() -> None:
        while not stop.is_set():
            try:
                with JournalReader(db) as journal:
                    found = read_status(journal)
            except UsageError:  # not created yet, or its tables not yet
                found = None
            if found is not None and found.state == "running" and found.snapshot:
                samples.append((time.time(), int(found.snapshot.get("done") or 0), found.journal_rows["ok"]))
            stop.wait(read_every)

    try:
        write_prompts(work / "p.jsonl", rows)
        interval = 0.1
        proc = start_corral(["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
                             "-j", "8", "--no-hedge", "--progress", "none"], work,
                            env={"CORRAL_STATUS_INTERVAL": str(interval)})
        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        _, err = proc.communicate(timeout=600)
        stop.set()
        thread.join()
        assert proc.returncode == 0, err[-2000:]
        lost, duplicated = exactly_once(read_jsonl(work / "out.jsonl"), rows)
        assert not lost and not duplicated and samples, (lost, duplicated, len(samples))
        gaps = [journaled - done for _, done, journaled in samples]
        # What the count in input order (before issue 18) would have said at each sample: the rows
        # of the longest prefix of the input all ended by then (the fake echoes the prompt, and the
        # journal keeps when each row ended).
        ended = _ended_at(db, rows)
        in_order_gaps = [journaled - _prefix_ended(ended, at) for at, _, journaled in samples]
        ahead = max(done for _, done, _ in samples)
        figures = {"rows": rows, "samples": len(samples), "largest_gap": max(gaps),
                   "mean_gap": round(sum(gaps) / len(gaps), 1), "largest_done_published": ahead,
                   "in_order_largest_gap": max(in_order_gaps),
                   "in_order_mean_gap": round(sum(in_order_gaps) / len(in_order_gaps), 1)}
        assert ahead > slow_rows and max(gaps) < max(in_order_gaps), figures
        figures["setup"] = (f"{rows:,} rows, 8 slots; the first {slow_rows} take {slow:g}s, the rest "
                            f"{latency * 1000:.0f} ms; status every {interval:g}s, sampled every "
                            f"{read_every * 1000:.0f} ms beside the journal's count")
        figures["result"] = (f"{len(samples)} samples: the published done trailed the rows journaled "
                             f"by at most {figures['largest_gap']} (mean {figures['mean_gap']}); the "
                             f"count in input order (before) by at most {figures['in_order_largest_gap']:,} "
                             f"(mean {figures['in_order_mean_gap']:,})")
        return figures
    finally:
        stop.set()
        server.stop()
