"""Results as JSONL, in input order: corral's own rows, or vLLM run-batch lines for Batch inputs.

The file is an :class:`~corral.sinks.output.AtomicOutput`: written as ``<output>.part`` and renamed
when the job ends, so a file at the output path is always complete; after a crash the re-run
rewrites it from the store, which is how every input appears exactly once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import orjson

from ..errors import UsageError
from ..results import Outcome
from .output import AtomicOutput


class JsonlSink:
    """Writes one JSON object per line; ``openai_batch`` switches to vLLM's run-batch shape."""

    def __init__(self, path: str | os.PathLike[str], *, openai_batch: bool = False,
                 inputs: Iterable[str | os.PathLike[str]] = ()) -> None:
        self.path = Path(path)
        self.openai_batch = openai_batch
        self.rows = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"{self.path}: cannot write the output: {exc.strerror or exc}") from None
        self.output = AtomicOutput(self.path, inputs=inputs, busy_message=(
            f"{self.path}: another corral process is writing this output ({self.path.name}.part); "
            "wait for it to finish, or choose another -o"))
        try:
            self._file: IO[bytes] | None = self.output.open("wb")
        except OSError as exc:
            self.output.abort()
            raise UsageError(f"{self.path}: cannot write the output: {exc.strerror or exc}") from None

    @property
    def part(self) -> Path:
        """Where the rows go until the job ends (the stream itself for a FIFO or device)."""
        return self.output.path_for_writing

    def write(self, outcome: Outcome) -> None:
        assert self._file is not None
        record = batch_line(outcome) if self.openai_batch else result_line(outcome)
        try:
            self._file.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        except OSError as exc:
            raise UsageError(f"{self.path}: writing the output failed: {exc.strerror or exc}; "
                             "results are kept in the store, re-run to finish") from None
        self.rows += 1

    def close(self, complete: bool = True) -> None:
        """Finish the file; only a complete job replaces the output path. Idempotent."""
        if self._file is None:
            return
        try:
            self._file.close()
            self.output.finish(complete, rows=self.rows)
        except OSError as exc:
            raise UsageError(f"{self.path}: writing the output failed: {exc.strerror or exc}; "
                             "results are kept in the store, re-run to finish") from None
        finally:
            self._file = None
            self.output.abort(rows=self.rows)  # a no-op once finished


def result_line(outcome: Outcome) -> dict[str, Any]:
    """corral's result row: OllamaManager's keys plus provenance and counters."""
    row = outcome.summary()
    row["success"] = outcome.ok
    if outcome.request.meta.get("line") is not None:
        row["line"] = outcome.request.meta["line"]
    return row


def _stable_id(outcome: Outcome, salt: str) -> str:
    digest = hashlib.sha256(f"{salt}:{outcome.request.key}:{outcome.request.index}".encode()).hexdigest()
    return digest[:32]


def batch_line(outcome: Outcome) -> dict[str, Any]:
    """vLLM run-batch's output line: {id, custom_id, response: {status_code, request_id, body}, error}."""
    request_id = f"corral-batch-{_stable_id(outcome, 'request')}"
    if outcome.ok:
        body = chat_completion_body(outcome)
        response = {"status_code": 200, "request_id": request_id, "body": body}
        error = None
    else:
        response = {"status_code": outcome.status_code or 500, "request_id": request_id, "body": None}
        error = outcome.error
    return {"id": f"corral-{_stable_id(outcome, 'id')}", "custom_id": outcome.request.id,
            "response": response, "error": error}


def chat_completion_body(outcome: Outcome) -> dict[str, Any]:
    """The full chat-completion object: the server's own when it spoke OpenAI, else built from Ollama's."""
    reply = outcome.reply
    assert reply is not None
    raw = reply.raw or {}
    if raw.get("object") in ("chat.completion", "text_completion") or "choices" in raw:
        return raw
    if outcome.request.endpoint == "embed":
        vectors = reply.embeddings or []
        return {"object": "list", "model": outcome.request.model,
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": reply.prompt_eval_count or 0,
                          "total_tokens": reply.prompt_eval_count or 0}}
    prompt_tokens = reply.prompt_eval_count or 0
    completion_tokens = reply.eval_count or 0
    finish = {"stop": "stop", "length": "length"}.get(reply.done_reason or "stop", "stop")
    return {
        "id": f"chatcmpl-{_stable_id(outcome, 'chat')}",
        "object": "chat.completion",
        "created": int(outcome.finished_at or 0),
        "model": reply.model or outcome.request.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": reply.text},
                     "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
