"""One small interface every wire format implements, and the records that cross it.

A backend turns a `Request` into one HTTP call and the answer into a `Reply`; it knows nothing of
queues, retries or files. Failures are raised as `BackendError` with ``retryable`` set from the
status code, so the engine alone decides what to do next.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..config import ServerSpec
from ..http import Headers, HttpClient, HttpError
from ..requests import Request
from ..secrets import redact
from .rate_headers import RateHeaders, rate_headers

# Statuses worth another try: the server is busy, restarting or overloaded, not the request wrong.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# An input longer than the model or server accepts: llama.cpp ("input (3001 tokens) is too large to
# process"), Ollama ("input length exceeds the context length"), vLLM ("maximum context length").
_TOO_LONG = re.compile(r"too large to process|too long|exceeds? (the )?(maximum )?context|"
                       r"maximum context length|context length exceeded", re.IGNORECASE)


@dataclass(slots=True)
class Reply:
    """A successful answer, normalised across wire formats (Ollama's names for the counts)."""

    text: str | None = None
    embeddings: list[list[float]] | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None       # nanoseconds, as Ollama reports them
    prompt_eval_duration: int | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    done_reason: str | None = None
    model: str | None = None
    raw: dict[str, Any] | None = None      # the server's JSON as received, for faithful outputs
    rate: RateHeaders | None = None        # the rate-limit state the answer's headers reported


@dataclass(slots=True)
class Streamed:
    """A streamed answer: the assembled `Reply`, and when its first token and its end arrived
    (seconds after the request was sent)."""

    reply: Reply
    first_token: float | None
    seconds: float
    chunks: int = 0


@dataclass(slots=True)
class ServerInfo:
    """What a probe learnt about a live server."""

    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> details (digest...)
    version: str | None = None
    slots: int | None = None               # llama.cpp's /props total_slots when available


class BackendError(Exception):
    """A failed call. ``status`` is the HTTP status, or None for connection problems and timeouts."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after: float | None = None, kind: str = "http", rate: RateHeaders | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.kind = kind  # "http", "connection", "timeout", "protocol", "too_long"
        self.rate = rate  # a refusal's rate-limit headers (a 429 carries them)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from LLM servers and ignored, as are
    ``nan`` and ``inf``)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


# -- reading answers defensively ----------------------------------------------------------------
# A server's answer is data, not a contract: a count of "many", a usage that is a list, a message
# that is a string. A figure of the wrong type is a missing figure (None); only a missing text is an
# error of the row. Counts above 2**53 are no real count (and would not fit the journal's integers).
_MAX_COUNT = 2 ** 53


def count_field(value: Any) -> int | None:
    """A token count or a duration in ns as a non-negative int, or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= _MAX_COUNT else None
    if isinstance(value, float) and math.isfinite(value) and 0 <= value <= _MAX_COUNT:
        return int(value)
    return None


def ms_field(value: Any) -> int | None:
    """Milliseconds (llama.cpp's timings) as nanoseconds, or None when not a usable number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return count_field(value * 1e6) if math.isfinite(value) else None


def text_field(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def object_field(data: Any, key: str) -> dict[str, Any]:
    """``data[key]`` when both are JSON objects, else an empty one."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, dict) else {}


def list_field(data: Any, key: str) -> list[Any]:
    """``data[key]`` when it is a JSON array, else an empty one."""
    value = data.get(key) if isinstance(data, dict) else None
    return value if isinstance(value, list) else []


def error_message(body: bytes, clean: Callable[[str], str] = str) -> str:
    """The human part of an error body: Ollama's {"error": "..."} or OpenAI's {"error": {"message"}}.

    ``clean`` (a backend's `Backend.redact`) runs before the text is cut to its length: a key near
    the end of a long message would otherwise be cut mid-key and no longer match. It sees the
    text's head plus a margin longer than any key, not a whole multi-MB error page."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body[:300 + _KEY_MARGIN].decode("utf-8", "replace").strip()
        return clean(text)[:300] or "(empty body)"
    if isinstance(data, dict):
        err = data.get("error", data.get("detail", data))
        if isinstance(err, dict):
            err = err.get("message", err)
        return clean(str(err)[:500 + _KEY_MARGIN])[:500]
    return clean(str(data)[:300 + _KEY_MARGIN])[:300]


#: Characters kept past a cut for masking: longer than any API key.
_KEY_MARGIN = 1024


class Backend(ABC):
    """One server, one wire format: payloads out, answers in. The bytes travel through the
    `HttpClient` it is given (shared by every backend of an engine); HTTP failures and statuses
    become `BackendError`s here, in `_errors` and `_decode`, for every call and stream alike."""

    kind: str = ""

    def __init__(self, spec: ServerSpec, http: HttpClient) -> None:
        self.spec = spec
        self.http = http
        self.base = spec.url
        self._headers = {"Content-Type": "application/json"}
        key = spec.api_key()
        self._secret = key
        if key:
            self._headers["Authorization"] = f"Bearer {key}"

    def redact(self, text: str) -> str:
        """``text`` with the API key (and any long run of its characters) masked, and credentials
        in URLs hidden. Some servers and proxies quote the key they refused in their error body,
        and error messages go to the terminal, the log, the journal, the output and bench files."""
        return redact(text, self._secret)

    @abstractmethod
    async def probe(self, timeout: float) -> ServerInfo:
        """Check the server answers and list its models."""

    @abstractmethod
    async def send(self, request: Request, timeout: float) -> Reply:
        """Run one request (chat, generate or embed)."""

    async def stream(self, request: Request, timeout: float) -> Streamed:
        """Run one chat/generate request streamed, timing its first token (for `corral bench`).

        The engine never streams (one answer per request is cheaper); a benchmark does, because
        time to first token is only visible in a stream."""
        raise BackendError(f"{self.kind} backend cannot stream", kind="protocol")

    @abstractmethod
    async def describe(self, models: Sequence[str], timeout: float) -> dict[str, Any]:
        """Provenance for a manifest: ``{"kind", "version", "models": {name: {"digest", ...}}}``.

        Asked once per run, apart from the probe, because a reviewer's question "which model exactly"
        needs more than the probe keeps (digests, quantisation, templates)."""

    async def _post(self, path: str, payload: dict[str, Any], timeout: float) -> dict[str, Any]:
        """POST JSON and return the decoded body, or raise a classified BackendError."""
        data = orjson.dumps(payload)
        return await self._call("POST", path, data, timeout)

    async def _post_rated(self, path: str, payload: dict[str, Any],
                          timeout: float) -> tuple[dict[str, Any], RateHeaders | None]:
        """`_post`, with the rate-limit state the answer's headers report (for `Reply.rate`)."""
        with self._errors():
            answer = await self.http.request("POST", self.base + path, headers=self._headers,
                                             body=orjson.dumps(payload), timeout=timeout)
        return self._decode(path, answer.status, answer.body, answer.headers), rate_headers(answer.headers)

    async def _get(self, path: str, timeout: float) -> dict[str, Any]:
        return await self._call("GET", path, None, timeout)

    async def _call(self, method: str, path: str, data: bytes | None, timeout: float) -> dict[str, Any]:
        with self._errors():
            answer = await self.http.request(method, self.base + path, headers=self._headers, body=data,
                                             timeout=timeout)
        return self._decode(path, answer.status, answer.body, answer.headers)

    def _decode(self, path: str, status: int, body: bytes,
                headers: Headers | str | None) -> dict[str, Any]:
        """The answer as a JSON object, or the BackendError its status calls for. ``headers``: the
        answer's headers (or, as before, just its Retry-After value)."""
        if status >= 300:
            self._refuse(path, status, body, headers)
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise BackendError(f"invalid JSON from {path} ({len(body)} bytes)", retryable=True,
                               kind="protocol") from None
        if not isinstance(decoded, dict):
            raise BackendError(f"unexpected answer from {path}: not a JSON object", retryable=True,
                               kind="protocol")
        return decoded

    def _refuse(self, path: str, status: int, body: bytes, headers: Headers | str | None) -> None:
        """Raise the BackendError for a status that is no answer: a redirect (never followed, never
        taken for the answer), or a 4xx/5xx."""
        rate = None
        if isinstance(headers, Headers):
            retry_after, location = headers.get("Retry-After"), headers.get("Location")
            rate = rate_headers(headers)
        else:
            retry_after, location = headers, None
        if status < 400:
            where = f" to {self.redact(location)}" if location else " (no Location)"
            raise BackendError(f"HTTP {status} from {path}: redirected{where}; corral does not follow "
                               f"redirects, give the final URL", status=status)
        message = error_message(body, self.redact)
        if _TOO_LONG.search(message):  # llama.cpp says so with a 500: no retry will help
            raise BackendError(f"HTTP {status} from {path}: {message}", status=status, kind="too_long")
        raise BackendError(
            f"HTTP {status} from {path}: {message}", status=status,
            retryable=status in RETRYABLE_STATUSES, retry_after=parse_retry_after(retry_after), rate=rate,
        )

    async def _stream_lines(self, path: str, payload: dict[str, Any],
                            timeout: float) -> AsyncIterator[tuple[float, bytes]]:
        """POST ``payload`` and yield (seconds since sent, line) for each non-empty line of the body;
        errors are classified as for `_call`."""
        body = orjson.dumps(payload)
        with self._errors():
            # The clock starts once the client is at hand: picking it may import aiohttp the first
            # time, which is no part of the server's answer.
            sending = self.http.stream("POST", self.base + path, headers=self._headers, body=body,
                                       timeout=timeout)
            started = time.perf_counter()
            async with sending as answer:
                if answer.status >= 300:
                    self._refuse(path, answer.status, await answer.read(), answer.headers)
                async for raw in answer.lines():
                    line = raw.strip()
                    if line:
                        yield time.perf_counter() - started, line

    def _stream_event(self, path: str, raw: bytes) -> dict[str, Any] | None:
        """One JSON event of a stream (an NDJSON line, or an SSE event's data); None when it is not
        an object. An ``error`` the server puts in the stream is raised, as a retryable failure."""
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise BackendError(f"invalid JSON in the stream from {path}", retryable=True,
                               kind="protocol") from None
        if not isinstance(event, dict):
            return None
        if event.get("error"):
            raise BackendError(self.redact(f"error in the stream from {path}: {event['error']}"),
                               retryable=True)
        return event

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """HttpErrors as BackendErrors of the same kind, with any key in them redacted. An answer
        over the size cap is a protocol failure, not retried: the same question gets the same
        answer, and an embedding batch is then worth splitting."""
        try:
            yield
        except HttpError as exc:
            if exc.kind == "too_large":
                raise BackendError(self.redact(str(exc)), kind="protocol") from None
            raise BackendError(self.redact(str(exc)), retryable=True, kind=exc.kind) from None


def sha256_text(text: str | None) -> str | None:
    """A short-lived text (a chat template, a parameter block) as a digest: comparable, not bulky."""
    return None if text is None else "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def fingerprint(facts: dict[str, Any]) -> str:
    """A digest of what a server says about a model, for servers that report no digest of their own."""
    blob = orjson.dumps(facts, option=orjson.OPT_SORT_KEYS)
    return "fingerprint:" + hashlib.sha256(blob).hexdigest()
