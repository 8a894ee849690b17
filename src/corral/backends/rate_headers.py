"""What a hosted endpoint says about its rate limits, read from an answer's headers.

OpenAI (and the proxies that copy it: OpenRouter, Together, vLLM behind a gateway) sends
``x-ratelimit-remaining-requests`` / ``-tokens`` and ``x-ratelimit-reset-requests`` / ``-tokens`` with
every answer, the resets as Go durations (``"6m0s"``, ``"1s"``, ``"250ms"``). The engine's limiter
(`corral.engine.rates`) stops sending when one says nothing is left, until it resets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ..http import Headers

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_MAX_RESET = 24 * 3600.0  # a reset a day away is no reset: a broken header, not a plan


@dataclass(frozen=True, slots=True)
class RateHeaders:
    """The rate-limit state a server reported with one answer; None where it said nothing."""

    remaining_requests: int | None = None
    remaining_tokens: int | None = None
    reset_requests: float | None = None   # seconds until the request budget is whole again
    reset_tokens: float | None = None


def parse_duration(text: str | None) -> float | None:
    """Seconds in a Go duration (``"1m30.5s"``, ``"250ms"``) or a bare number of seconds; None when
    it is neither, or not finite, or more than a day."""
    if not text:
        return None
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        position, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != position:
                return None
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            position = match.end()
        if position != len(text) or position == 0:
            return None
    if not math.isfinite(seconds) or seconds < 0 or seconds > _MAX_RESET:
        return None
    return seconds


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = int(float(text.strip()))
    except (ValueError, OverflowError):
        return None
    return max(0, value)


def rate_headers(headers: Headers | None) -> RateHeaders | None:
    """The answer's rate-limit state, or None when it carries none (every local server)."""
    if not headers:
        return None
    remaining_requests = headers.get("x-ratelimit-remaining-requests")
    remaining_tokens = headers.get("x-ratelimit-remaining-tokens")
    if remaining_requests is None and remaining_tokens is None:
        return None
    return RateHeaders(
        remaining_requests=_count(remaining_requests), remaining_tokens=_count(remaining_tokens),
        reset_requests=parse_duration(headers.get("x-ratelimit-reset-requests")),
        reset_tokens=parse_duration(headers.get("x-ratelimit-reset-tokens")))
