#!/usr/bin/env python3
"""Run issue #7's fault-injection scenarios at full size and print their figures as a table.

The scenarios are the functions of ``tests/scenarios.py`` (and issue #17's ``tests/scenarios_hostile.py``)
that the test suite runs at CI size: each checks its invariants (nothing lost or duplicated, bounded
re-sends and time, one-line errors...) and returns its figures. A scenario whose check fails is shown
as FAIL with the reason.

Usage: .venv/bin/python benchmarks/faults.py [--only 1,3,14] [--no-local] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import scenarios, scenarios_files, scenarios_fleet, scenarios_hostile, scenarios_rates  # noqa: E402

SCENARIOS: list[tuple[int, str, Callable[[Path], dict[str, Any]]]] = [
    (1, "SIGKILL x20, resume", lambda w: scenarios.sigkill_resume(w, rows=2000, kills=20)),
    (2, "server dies mid-run", lambda w: scenarios.server_dies(w, rows=6000)),
    (3, "30% 503 server busy", lambda w: scenarios.busy_503(w, rows=2000)),
    (4, "server never answers", lambda w: scenarios.hung_server(w, rows=500, timeout=1.0)),
    (5, "slow-loris + drops", lambda w: scenarios.slow_and_dropped(w, rows=1000, timeout=1.0)),
    (6, "unknown model", lambda w: scenarios.unknown_model(w, rows=2000)),
    (7, "bad JSON / whitespace", lambda w: scenarios.bad_json(w, rows=100)),
    (8, "context overflow", lambda w: scenarios.context_overflow(w, rows=500)),
    (9, "disk full", lambda w: scenarios.disk_full(w, rows=5000)),
    (10, "malformed inputs", scenarios.bad_inputs),
    (11, "two runs, one journal", lambda w: scenarios.two_runs(w, rows=400)),
    (12, "formula injection", scenarios.formula_injection),
    (13, "API key leaks", lambda w: scenarios.secrets(w, rows=200)),
    (14, "Ctrl-C", lambda w: scenarios.ctrl_c(w, rows=1000)),
    (14, "Ctrl-C, embedded llama.cpp", lambda w: scenarios.ctrl_c(w, rows=16, local=True)),
    (15, "hostile servers, absurd settings", lambda w: scenarios_hostile.hostile(w, rows=50)),
    (18, "status beside a writer", lambda w: scenarios.status_beside_writer(w, rows=4000)),
    # issue 17, part B: files, keys, inputs, terminals (tests/scenarios_files.py)
    (31, "input columns never overwritten", scenarios_files.column_clash),
    (32, "keys never leave", scenarios_files.key_leaks),
    (33, "malformed lines, nothing half-written", scenarios_files.bad_lines),
    (34, "damaged journal, state file, BOM, UTF-32", lambda w: scenarios_files.damaged_files(w, rows=2000)),
    (35, "journal and output through a symlink", lambda w: scenarios_files.linked_store(w, rows=400)),
    (36, "escape sequences on the terminal", scenarios_files.terminal_escapes),
    (37, "implicit ids, CSV header, full --output-dir", scenarios_files.the_rest),
    # issue 18, items 1 and 3: true progress, servers that come and go (tests/scenarios_fleet.py)
    (41, "server down at the start comes up", lambda w: scenarios_fleet.down_at_start(w, rows=2000)),
    (42, "503-only server beside a good one", lambda w: scenarios_fleet.busy_beside_good(w, rows=1300)),
    (43, "progress accuracy", lambda w: scenarios_fleet.progress_accuracy(w, rows=2000)),
    # issue 18, item 4: rate limits (tests/scenarios_rates.py)
    (44, "rpm limit", scenarios_rates.rpm_limit),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated scenario numbers")
    parser.add_argument("--no-local", action="store_true", help="skip the embedded llama.cpp run")
    args = parser.parse_args()
    only = {int(x) for x in args.only.split(",") if x.strip()}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"# corral fault scenarios: {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} cores, load {load}; {' '.join(sys.argv)}", flush=True)
    rows: list[tuple[str, str, str, str, str]] = []
    failed = 0
    for number, name, run in SCENARIOS:
        if only and number not in only:
            continue
        if args.no_local and "llama.cpp" in name:
            continue
        with tempfile.TemporaryDirectory(prefix=f"corral-fault-{number}-") as tmp:
            started = time.monotonic()
            try:
                figures = run(Path(tmp))
                status, setup, result = "ok", figures["setup"], figures["result"]
            except Exception as exc:  # report and go on with the other scenarios
                failed += 1
                status, setup, result = "FAIL", name, f"{type(exc).__name__}: {str(exc)[:300]}"
                traceback.print_exc(file=sys.stderr)
            seconds = f"{time.monotonic() - started:.0f}"
        rows.append((str(number), setup, result, status, seconds))
        print(f"[{number}] {status} ({seconds}s): {result}", file=sys.stderr, flush=True)
    print("\n| # | scenario | result | check | s |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
