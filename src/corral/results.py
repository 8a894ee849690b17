"""The Outcome record: what happened to one input row. Engine, store and sinks all speak it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backends.base import Reply
from .requests import Request


@dataclass(slots=True)
class Outcome:
    """The final word on one row: a reply or an error, with where and how it was obtained."""

    request: Request
    reply: Reply | None = None
    error: str | None = None
    # "http", "connection", "timeout", "protocol", "no_server", "invalid_answer", "internal" (a fault in
    # corral while handling an answer), "invalid_request" (the request cannot be encoded to be sent)
    error_kind: str | None = None
    status_code: int | None = None
    attempts: int = 0
    server: str | None = None
    latency: float | None = None     # seconds, of the attempt that produced the answer
    started_at: float | None = None  # wall-clock epoch seconds
    finished_at: float | None = None
    cached: bool = False             # answered from the store, not sent this run

    @property
    def ok(self) -> bool:
        return self.error is None and self.reply is not None

    @property
    def text(self) -> str | None:
        return self.reply.text if self.reply else None

    def for_request(self, request: Request, *, cached: bool | None = None) -> Outcome:
        """The same answer for another row that asked the identical thing."""
        return Outcome(
            request=request, reply=self.reply, error=self.error, error_kind=self.error_kind,
            status_code=self.status_code, attempts=self.attempts, server=self.server,
            latency=self.latency, started_at=self.started_at, finished_at=self.finished_at,
            cached=self.cached if cached is None else cached,
        )

    def summary(self) -> dict[str, Any]:
        """Flat fields shared by every output format."""
        reply = self.reply
        return {
            "id": self.request.id,
            "prompt": self.request.prompt,
            "response": reply.text if reply else None,
            "model": self.request.model,
            "server": self.server,
            "error": self.error,
            "prompt_eval_count": reply.prompt_eval_count if reply else None,
            "eval_count": reply.eval_count if reply else None,
            "eval_duration": reply.eval_duration if reply else None,
            "total_duration": reply.total_duration if reply else None,
            "latency": round(self.latency, 4) if self.latency is not None else None,
            "attempts": self.attempts,
            "cached": self.cached,
        }
