"""Issue 18's rate-limit scenario (item 4), for ``benchmarks/faults.py`` (number 44).

A hosted endpoint allows ``rpm`` requests per minute. The same prompt file runs through
``corral run --rpm N`` against a fake OpenAI-compatible server and, beside it, without the limit;
the fake notes when each request arrived. Figures: the most requests that arrived in any 5-second
and any 60-second window. With ``--rpm N`` corral starts one request every ``60 / N`` seconds at most
and N in any 60 s, so any 5-second window holds at most ``ceil(5 * N / 60)`` starts.

Arrival times are a figure here, printed by the benchmark; the test suite asserts on the limiter's
own log instead (tests/test_rates.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tests.conftest import exactly_once, read_jsonl, run_corral, write_prompts
from tests.fakes import FakeServer

Figures = dict[str, Any]


def most_in_window(times: list[float], seconds: float) -> int:
    """The most of ``times`` inside any window of ``seconds`` (windows that start at an arrival
    are the fullest ones)."""
    times = sorted(times)
    most, end = 0, 0
    for start_index, start in enumerate(times):
        while end < len(times) and times[end] < start + seconds:
            end += 1
        most = max(most, end - start_index)
    return most


def rpm_limit(work: Path, rows: int = 110, rpm: int = 100, slots: int = 8) -> Figures:
    """``rows`` prompts at ``--rpm rpm`` on one fake, then the same without a limit."""
    figures: dict[str, dict[str, Any]] = {}
    for label, extra in (("--rpm", ["--rpm", str(rpm)]), ("no limit", [])):
        folder = work / label.strip("-").replace(" ", "_")
        folder.mkdir()
        write_prompts(folder / "p.jsonl", rows)
        with FakeServer(api="openai", slots=slots, latency=0.01) as server:
            code, _, err, seconds = run_corral(
                ["run", "p.jsonl", "--server", server.url, "--api", "openai", "-m", "llama3.2",
                 "-o", "out.jsonl", "-j", str(slots), "--progress", "none", *extra], folder, timeout=600)
            assert code == 0, err
            lost, duplicated = exactly_once(read_jsonl(folder / "out.jsonl"), rows)
            assert not lost and not duplicated, (lost, duplicated)
            arrivals = server.arrivals
        figures[label] = {"5s": most_in_window(arrivals, 5.0), "60s": most_in_window(arrivals, 60.0),
                          "seconds": seconds, "requests": len(arrivals)}
    limited = figures["--rpm"]
    allowed_5s = math.ceil(5 * rpm / 60)
    assert limited["60s"] <= rpm, limited
    assert limited["5s"] <= allowed_5s, limited
    free = figures["no limit"]
    return {
        "setup": f"{rows} rows on one fake OpenAI server ({slots} slots, 10 ms), --rpm {rpm} and no limit",
        "result": f"--rpm {rpm}: at most {limited['5s']} requests in any 5 s (the limit allows "
                  f"{allowed_5s}: one every {60 / rpm:g} s) and {limited['60s']} in any 60 s (limit {rpm}), "
                  f"{limited['requests']} requests in {limited['seconds']:.1f}s; no limit: "
                  f"{free['5s']} in 5 s, {free['60s']} in 60 s, {free['seconds']:.1f}s",
    }
