"""Rate limits of hosted endpoints: requests and tokens per minute, and what the server says is left.

A hosted endpoint (OpenAI, OpenRouter, a metered vLLM gateway) refuses with 429 past its limits,
and every refusal costs a round trip and a back-off. A server's limiter keeps a log of the requests
it started in the last minute (a sliding window, not a fixed clock minute): a start is admitted only
when the starts in the 60 seconds before it stay within ``rpm`` and their tokens within ``tpm``, so
no 60-second window ever holds more. Starts are also spread evenly, one every ``60 / rpm`` seconds
at most, because providers enforce a minute's limit in shorter slices (OpenAI: "60,000 requests per
minute may be enforced as 1,000 per second"), and a whole minute's budget sent in one burst is
refused: at ``rpm = 60``, one a second, so at most 5 in any 5 seconds.

A request's tokens are not known before its answer: it enters the log with an estimate (prompt
characters / 4 plus its ``max_tokens`` / ``num_predict``, or the model's mean answer so far), which
the answer's usage then replaces. The answer's ``x-ratelimit-remaining-*`` headers and a 429's
``Retry-After`` pause the server's starts until the reset they name, whatever the configured limits.

Decisions take ``now`` as an argument (monotonic seconds), so they are testable without waiting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from ..backends import BackendError, Reply
from ..backends.rate_headers import RateHeaders
from .costs import Speeds, prompt_tokens

#: The window the limits hold over, in seconds.
WINDOW_SECONDS = 60.0
#: Added to every computed wait, so a waiter wakes just after an entry leaves the window, not on it.
_EPSILON = 1e-3
#: The longest pause a header or a Retry-After may impose at once: a broken header must not stop a run.
MAX_PAUSE_SECONDS = 600.0


@dataclass(slots=True, eq=False)
class Ticket:
    """One admitted start in the log: when, and its tokens (estimated, then as the answer counted)."""

    at: float
    tokens: int
    live: bool = True    # still in the log (its tokens count in the window's sum)


class RateLimiter:
    """One server's request and token budgets per minute. ``rpm`` / ``tpm`` None: that budget is
    unlimited (a limiter with neither only honours the server's headers and Retry-After)."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._log: deque[Ticket] = deque()      # starts in the last WINDOW_SECONDS, oldest first
        self._last_start = float("-inf")
        self._tokens = 0                        # tokens of the starts in the log
        self.paused_until = float("-inf")
        # Counters, for summaries and tests: what the limiter decided, never how long anything took.
        self.admitted = 0
        self.refused = 0             # admission asked for a row and refused (the row went back)
        self.held = 0                # times a slot was told to wait before taking a row
        self.pauses = 0              # pauses on the server's word (headers, Retry-After)
        self.peak_requests = 0       # the most starts the log held in one window, this one included
        self.peak_tokens = 0         # the most tokens it held in one window, as estimated at the time

    @property
    def limits(self) -> bool:
        """True when it holds a configured budget (not just the server's word)."""
        return bool(self.rpm or self.tpm)

    def _expire(self, now: float) -> None:
        edge = now - WINDOW_SECONDS
        log = self._log
        while log and log[0].at <= edge:
            old = log.popleft()
            old.live = False
            self._tokens -= old.tokens

    def wait(self, now: float, tokens: int = 0) -> float:
        """Seconds until a start worth ``tokens`` may be admitted; 0 when it may start now."""
        self._expire(now)
        wait = self.paused_until - now
        log = self._log
        if self.rpm is not None:
            if len(log) >= self.rpm:
                wait = max(wait, log[len(log) - self.rpm].at + WINDOW_SECONDS - now)
            wait = max(wait, self._last_start + WINDOW_SECONDS / self.rpm - now)  # evenly spread
        if self.tpm is not None and log and self._tokens + tokens > self.tpm:
            # Wait for the oldest starts to leave until this one fits; one bigger than the whole
            # budget waits for an empty window and then goes alone (it could never go otherwise).
            need = self._tokens + min(tokens, self.tpm) - self.tpm
            freed = 0
            for ticket in log:
                freed += ticket.tokens
                if freed >= need:
                    wait = max(wait, ticket.at + WINDOW_SECONDS - now)
                    break
            else:
                wait = max(wait, log[-1].at + WINDOW_SECONDS - now)
        return wait + _EPSILON if wait > 0 else 0.0

    def hold(self, now: float) -> float:
        """`wait` for a slot about to take a row (its tokens not known yet), counted in ``held``."""
        wait = self.wait(now)
        if wait > 0:
            self.held += 1
        return wait

    def admit(self, now: float, tokens: int) -> Ticket | None:
        """Record a start worth ``tokens`` (an estimate) when the budgets allow it now; else None."""
        if self.wait(now, tokens) > 0:
            self.refused += 1
            return None
        ticket = Ticket(now, tokens)
        self._log.append(ticket)
        self._last_start = now
        self._tokens += tokens
        self.admitted += 1
        self.peak_requests = max(self.peak_requests, len(self._log))
        self.peak_tokens = max(self.peak_tokens, self._tokens)
        return ticket

    def settle(self, ticket: Ticket, tokens: int | None) -> None:
        """The answer's real token count replaces the estimate (None: the estimate stands)."""
        if tokens is None:
            return
        if ticket.live:
            self._tokens += tokens - ticket.tokens
            self.peak_tokens = max(self.peak_tokens, self._tokens)
        ticket.tokens = tokens

    def pause(self, now: float, seconds: float) -> None:
        """Start nothing for ``seconds`` (capped at MAX_PAUSE_SECONDS): the server said so."""
        until = now + min(max(seconds, 0.0), MAX_PAUSE_SECONDS)
        if until > self.paused_until:
            self.paused_until = until
            self.pauses += 1

    def on_headers(self, now: float, rate: RateHeaders, next_tokens: int) -> None:
        """Pause until the reset when the server says the requests, or the tokens a next request of
        ``next_tokens`` would need, are used up."""
        if rate.remaining_requests == 0 and rate.reset_requests is not None:
            self.pause(now, rate.reset_requests)
        if (rate.remaining_tokens is not None and rate.reset_tokens is not None
                and rate.remaining_tokens < next_tokens):
            self.pause(now, rate.reset_tokens)


def estimate_tokens(request: Any, speeds: Speeds) -> int:
    """A request's tokens before its answer: its prompt (characters / 4) plus the answer it asks
    for (``num_predict`` / ``max_tokens``) or, without one, the model's mean answer so far."""
    tokens = prompt_tokens(request)
    if request.endpoint != "embed" and getattr(request, "inputs", None) is None:
        tokens += int(speeds.expected_output(request))
    return tokens


def answered_tokens(reply: Reply) -> int | None:
    """Prompt plus completion tokens as the answer's usage counted them; None when it did not say."""
    if reply.prompt_eval_count is None and reply.eval_count is None:
        return None
    return (reply.prompt_eval_count or 0) + (reply.eval_count or 0)


def after_attempt(limiter: RateLimiter, now: float, ticket: Ticket | None, reply: Reply | None,
                  error: BackendError | None, next_tokens: int,
                  max_busy: float = MAX_PAUSE_SECONDS) -> None:
    """Learn from one attempt's end: its real tokens, the server's headers, a 429's Retry-After
    (which pauses the server at most ``max_busy`` seconds, the most a row waits on "busy": its rows
    must get the attempt that fails them)."""
    if ticket is not None and reply is not None:
        limiter.settle(ticket, answered_tokens(reply))
    rate = reply.rate if reply is not None else error.rate if error is not None else None
    if rate is not None:
        limiter.on_headers(now, rate, next_tokens)
    if error is not None and error.status == 429 and error.retry_after:
        limiter.pause(now, min(error.retry_after, max_busy))


def says_rates(reply: Reply | None, error: BackendError | None) -> bool:
    """True when an attempt's end carries word of the server's rate limits."""
    if reply is not None:
        return reply.rate is not None
    return error is not None and (error.rate is not None or (error.status == 429 and bool(error.retry_after)))
