"""The bounds every front checks settings against: one rule for the CLI, the config file and Python.

A setting that is absurd (a billion slots, a timeout of ``nan`` or ``-1``) is refused before anything
starts, with one line naming the setting and what it may be. Each check returns the problem as text
(or None), so the config loader can put the file and line in front of it and the other fronts raise
it as a usage error.
"""

from __future__ import annotations

import math
from typing import Any

#: The most slots (requests in flight) one server may be given. Each slot is a task and a
#: connection; no LLM server runs anywhere near this many requests at once, while a typo such as
#: ``-j 1000000000`` would otherwise grow to gigabytes before the first request.
MAX_SLOTS_PER_SERVER = 4096

#: Rows a table job reads, holds and writes at a time (``--chunk-size``, ``chunk_size=``). A job
#: holds at most a few chunks whatever the table's length, so this sets its memory plateau: at
#: 10,000 rows a 10,000-row table already holds a whole chunk, and a table of a million rows holds
#: no more than ~1.15x that (benchmarks/resume.py; 20,000-row chunks made it 1.22x).
CHUNK_ROWS = 10_000


def slots_problem(value: Any) -> str | None:
    """Why ``value`` is not a number of slots per server, or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"must be a positive integer, not {value!r}"
    if value > MAX_SLOTS_PER_SERVER:
        return (f"must be at most {MAX_SLOTS_PER_SERVER} slots per server, not {value} "
                f"(no server runs that many requests at once)")
    return None


def seconds_problem(value: Any) -> str | None:
    """Why ``value`` is not a duration in seconds (a finite number > 0), or None when it is one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number of seconds, not {value!r}"
    if not math.isfinite(value) or value <= 0:
        return f"must be a finite number of seconds > 0, not {value!r}"
    return None


def per_minute_problem(value: Any) -> str | None:
    """Why ``value`` is not a rate limit (``rpm``, ``tpm``: a whole number per minute > 0), or None."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return f"must be a positive whole number per minute, not {value!r}"
    return None
