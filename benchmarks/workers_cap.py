#!/usr/bin/env python3
"""The most calls in flight, measured at the server, for each way of asking for a number of calls
at once (issue 19: ``workers`` means what Ollama-run-async means; learnt slots used to climb to twice
it, so ``workers=3`` reached 6).

Prints figures; it is not a test. Each line is one call through a public front against a fresh fake
Ollama server with unlimited slots and ``--latency`` seconds per answer, so nothing but corral
limits the calls at once; the server counts the most it held at one time (the two-server line
names one fake twice, so its count is the fleet's). ``workers=None`` is
corral's own learning, shown beside the caps: the ceiling it climbs to when nobody sets one.

Usage: .venv/bin/python benchmarks/workers_cap.py [--rows 60] [--latency 0.03]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

import corral  # noqa: E402
from tests.fakes import FakeServer  # noqa: E402


def peak(call: Callable[[list[str]], Any], latency: float, servers: int = 1) -> int:
    """Run ``call`` against a fresh fake server; the most requests it held at once. For two
    servers, the same fake under two names (127.0.0.1 and localhost), so its peak is the fleet's."""
    fake = FakeServer(api="ollama", latency=latency).start()
    try:
        call([fake.url, fake.url.replace("127.0.0.1", "localhost")][:servers])
        return fake.max_in_flight
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60)
    parser.add_argument("--latency", type=float, default=0.03)
    args = parser.parse_args()
    df = pd.DataFrame({"text": [f"row {i}" for i in range(args.rows)],
                       "title_en": [f"event {i}" for i in range(args.rows)]})
    prompts = [f"q{i}" for i in range(args.rows)]
    cases: list[tuple[str, str, Callable[[list[str]], Any], int]] = [
        ("run_analysis(df, workers=1)", "1",
         lambda urls: corral.run_analysis(df, workers=1, servers=urls, progress=False), 1),
        ("run_analysis(df, workers=2)", "2",
         lambda urls: corral.run_analysis(df, workers=2, servers=urls, progress=False), 1),
        ("run_analysis(df)  # workers=3, the default", "3",
         lambda urls: corral.run_analysis(df, servers=urls, progress=False), 1),
        ("run_analysis(df, workers=None)  # learnt", "-",
         lambda urls: corral.run_analysis(df, workers=None, servers=urls, progress=False), 1),
        ("fill_missing_fields(df, workers=2)", "2",
         lambda urls: corral.fill_missing_fields(df, json_fields=("City",), workers=2, servers=urls,
                                                 progress=False), 1),
        ("batch_generate(prompts, 'llama3.2', 2, 0)", "2",
         lambda urls: corral.batch_generate(prompts, "llama3.2", 2, 0, servers=urls), 1),
        ("run_analysis(df, workers=4, max_concurrent_calls=2), 2 servers", "2 in all",
         lambda urls: corral.run_analysis(df, workers=4, max_concurrent_calls=2, servers=urls,
                                          progress=False), 2),
    ]
    print(f"{args.rows} rows, {args.latency} s per answer, fake Ollama servers with unlimited slots")
    print(f"{'call':<66} {'asked':>9} {'peak in flight at the server':>30}")
    for label, asked, call, servers in cases:
        print(f"{label:<66} {asked:>9} {peak(call, args.latency, servers):>30}")


if __name__ == "__main__":
    main()
