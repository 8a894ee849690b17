"""Is an answer what was asked? The content checks the engine applies before journaling a success.

Only asks for JSON (``format`` "json", a JSON Schema, or an OpenAI ``response_format``) have
something to check: a model can still answer them with prose, a cut-off object, or, in a known
Ollama JSON-mode failure, nothing but whitespace until the token limit. Such an answer journaled as
a success would be a silent hole in the user's table; the engine re-asks it with another seed and
then records the row as failed with the reason (see ``EngineSettings.content_retries``).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .backends.base import Reply
from .requests import Request

_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def parse_json_response(text: str | None) -> Any:
    """The JSON inside a model's answer, tolerating ```json fences; ValueError when there is none."""
    if text is None:
        raise ValueError("no response")
    candidate = text.strip()
    fenced = _FENCE.match(candidate)
    if fenced:
        candidate = fenced.group(1).strip()
    try:
        return orjson.loads(candidate)
    except orjson.JSONDecodeError:
        pass
    start = min((i for i in (candidate.find("{"), candidate.find("[")) if i >= 0), default=-1)
    if start >= 0:  # prose around one JSON value: take the value
        end = max(candidate.rfind("}"), candidate.rfind("]"))
        if end > start:
            try:
                return orjson.loads(candidate[start:end + 1])
            except orjson.JSONDecodeError:
                pass
    raise ValueError("response is not JSON")


def wanted_schema(fmt: Any) -> dict[str, Any] | None | bool:
    """What a ``format`` asks for: False (no JSON), True (any JSON) or a JSON Schema."""
    if fmt is None:
        return False
    if fmt == "json":
        return True
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "text" and "properties" not in fmt:
            return False  # OpenAI's response_format {"type": "text"}
        if kind == "json_object" and "properties" not in fmt:
            return True
        if kind == "json_schema" and isinstance(fmt.get("json_schema"), dict):
            schema = fmt["json_schema"].get("schema")
            return schema if isinstance(schema, dict) else True
        return fmt  # a JSON Schema, as Ollama's format takes it
    return False


def json_answer_problem(request: Request, reply: Reply) -> str | None:
    """Why ``reply`` is not the JSON ``request`` asked for, or None (also when no JSON was asked)."""
    if request.endpoint == "embed":
        return None
    wanted = wanted_schema(request.format)
    if wanted is False:
        return None
    text = reply.text or ""
    cut = reply.done_reason == "length"
    limit = f" after {reply.eval_count} tokens" if reply.eval_count else ""
    if not text.strip():
        why = f"stopped at the token limit{limit}" if cut else "empty answer"
        return f"answer is only whitespace, not JSON ({why})"
    try:
        value = parse_json_response(text)
    except ValueError:
        return f"answer is not JSON (cut off at the token limit{limit})" if cut else "answer is not JSON"
    if isinstance(wanted, dict):
        return _schema_problem(value, wanted)
    return None


def batch_answer_problem(request: Request, reply: Reply) -> str | None:
    """The check for OpenAI Batch lines, as vLLM's run-batch answers them: an answer cut at the
    token limit is the server's answer (status 200, ``finish_reason: "length"``, its text), even to
    a JSON ask; re-asking would only be cut again at the same limit. Complete answers are checked
    as `json_answer_problem` checks them."""
    if reply.done_reason == "length":
        return None
    return json_answer_problem(request, reply)


def _schema_problem(value: Any, schema: dict[str, Any]) -> str | None:
    """The top-level checks that catch a wrong answer cheaply: type and required keys."""
    kind = schema.get("type")
    if kind == "object" or (kind is None and isinstance(schema.get("properties"), dict)):
        if not isinstance(value, dict):
            return f"answer is JSON but not an object ({type(value).__name__})"
        required = schema.get("required")
        missing = [k for k in required if k not in value] if isinstance(required, list) else []
        if missing:
            return f"answer lacks required key(s) {', '.join(map(str, missing))}"
    elif kind == "array" and not isinstance(value, list):
        return f"answer is JSON but not an array ({type(value).__name__})"
    return None
