"""OpenAI's batch output and error lines: ``{id, custom_id, response{status_code, request_id, body},
error}``.

An answer goes to the output file with the full response body (corral's `chat_completion_body`: the
server's own object when it spoke OpenAI, else built from Ollama's). A failure goes to the error
file the way OpenAI writes it: a server's HTTP refusal as that status with an ``error`` body, any
other failure (timeouts, retries exhausted, no server for the model, the window expired) as
``response: null`` and ``error: {code, message}``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from ..requests import Request
from ..results import Outcome
from ..sinks.jsonl import chat_completion_body

MODEL_NOT_FOUND = "model_not_found"  # the error_kind of a row whose model no server of the fleet has


def _digest(*parts: str) -> str:
    return hashlib.sha256(":".join(parts).encode()).hexdigest()


def request_ids(batch_id: str, custom_id: str) -> tuple[str, str]:
    """The line's ``id`` and ``request_id``: stable, so a line rewritten after a restart is the same."""
    digest = _digest(batch_id, custom_id)
    return f"batch_req_{digest[:32]}", f"req_{digest[32:64]}"


def output_line(batch_id: str, outcome: Outcome) -> bytes:
    request = outcome.request
    line_id, request_id = request_ids(batch_id, request.id)
    record: dict[str, Any]
    if outcome.ok:
        record = {"id": line_id, "custom_id": request.id, "error": None,
                  "response": {"status_code": 200, "request_id": request_id, "body": _body(outcome)}}
    elif outcome.status_code and outcome.error_kind in ("http", "too_long", MODEL_NOT_FOUND):
        kind = "invalid_request_error" if outcome.status_code < 500 else "server_error"
        code = MODEL_NOT_FOUND if outcome.error_kind == MODEL_NOT_FOUND else None
        record = {"id": line_id, "custom_id": request.id, "error": None,
                  "response": {"status_code": outcome.status_code, "request_id": request_id,
                               "body": {"error": {"message": outcome.error, "type": kind,
                                                  "param": None, "code": code}}}}
    else:
        record = {"id": line_id, "custom_id": request.id, "response": None,
                  "error": {"code": outcome.error_kind or "server_error", "message": outcome.error}}
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def expired_line(batch_id: str, request: Request) -> bytes:
    line_id, _ = request_ids(batch_id, request.id)
    return orjson.dumps({"id": line_id, "custom_id": request.id, "response": None, "error": {
        "code": "batch_expired",
        "message": "This request could not be executed before the completion window expired."}}) + b"\n"


def _body(outcome: Outcome) -> dict[str, Any]:
    reply = outcome.reply
    assert reply is not None
    raw = reply.raw or {}
    if outcome.request.endpoint != "generate" or "choices" in raw:
        return chat_completion_body(outcome)
    # /v1/completions answered by Ollama's /api/generate: OpenAI's text_completion shape.
    prompt_tokens, completion_tokens = reply.prompt_eval_count or 0, reply.eval_count or 0
    return {"id": f"cmpl-{_digest(outcome.request.key)[:24]}", "object": "text_completion",
            "created": int(outcome.finished_at or 0), "model": reply.model or outcome.request.model,
            "choices": [{"index": 0, "text": reply.text, "logprobs": None,
                         "finish_reason": "length" if reply.done_reason == "length" else "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}
