"""The batch record and its state machine, as OpenAI's Batch object has them.

validating -> in_progress -> finalizing -> completed; validating -> failed (bad input);
in_progress -> expired (the completion window passed; what finished is kept); validating or
in_progress -> cancelling -> cancelled. Each move stamps its ``<status>_at`` time, and the record
is saved on every move, so a restarted gateway knows where each batch stood.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from .db import StateDB, page

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
FINAL = frozenset({"completed", "failed", "expired", "cancelled"})
MOVES: dict[str, frozenset[str]] = {
    "validating": frozenset({"in_progress", "failed", "cancelling"}),
    "in_progress": frozenset({"finalizing", "expired", "cancelling"}),
    "finalizing": frozenset({"completed", "expired"}),
    "cancelling": frozenset({"cancelled"}),
}
BATCH_ID = re.compile(r"^batch_[0-9a-f]{24}$")
_WINDOW = re.compile(r"^(\d+)([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_PRIORITY = 100


class BatchRequestError(ValueError):
    """A create or cancel the API refuses (400/404/409), with OpenAI's ``param``."""

    def __init__(self, message: str, *, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


def window_seconds(window: str) -> int:
    """``24h`` (OpenAI's only value), or any ``<n>s|m|h|d`` for shorter jobs and tests."""
    match = _WINDOW.match(window or "")
    if not match or int(match.group(1)) <= 0:
        raise BatchRequestError(f"completion_window must look like 24h (or 90m, 3600s), not {window!r}",
                                param="completion_window")
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def priority_of(metadata: dict[str, str] | None) -> int:
    """``metadata={"priority": "4"}``: this batch gets 4 turns for another's 1 (1..100, default 1)."""
    raw = (metadata or {}).get("priority")
    if raw is None:
        return 1
    try:
        value = int(str(raw))
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PRIORITY:
        raise BatchRequestError(f"metadata.priority must be a whole number from 1 to {MAX_PRIORITY}, "
                                f"not {raw!r}", param="metadata")
    return value


def check_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's rule: at most 16 string pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512
            for k, v in metadata.items()):
        raise BatchRequestError("metadata must be at most 16 string pairs (keys up to 64 characters, "
                                "values up to 512)", param="metadata")
    return dict(metadata)


@dataclass(slots=True)
class Batch:
    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    status: str = "validating"
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[dict[str, Any]] | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    model: str | None = None
    priority: int = 1
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 0, "output_tokens": 0})

    @classmethod
    def new(cls, input_file_id: str, endpoint: str, completion_window: str,
            metadata: dict[str, str] | None) -> Batch:
        if endpoint not in ENDPOINTS:
            raise BatchRequestError(f"endpoint must be one of {', '.join(ENDPOINTS)}, not {endpoint!r}",
                                    param="endpoint")
        seconds = window_seconds(completion_window)
        metadata = check_metadata(metadata)
        now = int(time.time())
        return cls(id=f"batch_{secrets.token_hex(12)}", input_file_id=input_file_id, endpoint=endpoint,
                   completion_window=completion_window, created_at=now, expires_at=now + seconds,
                   metadata=metadata, priority=priority_of(metadata))

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def move(self, status: str) -> None:
        if status not in MOVES.get(self.status, ()):
            raise BatchRequestError(f"batch {self.id} is {self.status}; it cannot become {status}",
                                    status=409)
        self.status = status
        setattr(self, f"{status}_at", int(time.time()))

    def file_id(self, kind: str) -> str:
        """The id its output (or error) file will have: fixed, so a re-run after a crash writes the
        same file again instead of a second one."""
        return "file-" + hashlib.sha256(f"{self.id}:{kind}".encode()).hexdigest()[:24]

    def api(self) -> dict[str, Any]:
        """The Batch object as OpenAI's API returns it."""
        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id, "created_at": self.created_at,
            "in_progress_at": self.in_progress_at, "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at, "completed_at": self.completed_at,
            "failed_at": self.failed_at, "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at, "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata, "model": self.model,
            "usage": {**self.usage, "total_tokens": sum(self.usage.values()),
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        }


class BatchTable:
    """Batch records in the state file, saved whole on every change."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def save(self, batch: Batch) -> None:
        record = orjson.dumps(dataclasses.asdict(batch)).decode()
        self.db.execute("INSERT INTO batches (id, status, record) VALUES (?, ?, ?) "
                        "ON CONFLICT(id) DO UPDATE SET status = excluded.status, record = excluded.record",
                        (batch.id, batch.status, record))

    def get(self, batch_id: str) -> Batch | None:
        if not BATCH_ID.match(batch_id):
            return None
        row = self.db.one("SELECT record FROM batches WHERE id = ?", (batch_id,))
        return _load(row[0]) if row else None

    def page(self, limit: int, after: str | None) -> tuple[list[Batch], bool]:
        rows, more = page(self.db, "batches", limit=limit, after=after)
        return [_load(row[3]) for row in rows], more

    def unfinished(self) -> list[Batch]:
        rows = self.db.all("SELECT record FROM batches WHERE status NOT IN "
                           "('completed', 'failed', 'expired', 'cancelled') ORDER BY seq")
        return [_load(row[0]) for row in rows]

    def reading(self, file_id: str) -> str | None:
        """An unfinished batch reading this file, if any."""
        for batch in self.unfinished():
            if batch.input_file_id == file_id:
                return batch.id
        return None


def _load(record: str) -> Batch:
    return Batch(**orjson.loads(record))
