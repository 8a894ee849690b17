"""A faithful fake LLM server (Ollama or OpenAI-compatible) for corral's tests and benchmarks.

Why a fake: corral's scheduling, failover, retry, resume and crash tests need servers that answer in
milliseconds, deterministically, and that can be made to misbehave on demand (fail, hang, drop the
connection, die and come back on the same port). Real Ollama / vLLM / llama.cpp cannot do that, and
mocks inside the client process cannot be reached by a ``corral run`` subprocess. So this is a real
HTTP server (``aiohttp.web``) on 127.0.0.1, running its own event loop in a background thread: sync
pytest tests drive it with plain attribute writes, and any process on the machine can talk to it.

Wire formats follow the real servers (checked against ollama/ollama ``server/routes.go`` and
``docs/api.md``, OpenAI's chat-completion / completion / embedding / model objects, vLLM's error
bodies, llama.cpp's ``/health`` and ``/props``), so a client that works here should work there.

Run one from a shell (prints ``READY <url>`` once listening, stops on SIGTERM)::

    python -m tests.fakes.server --api ollama --port 0 --latency 0.01 --slots 4
"""

from __future__ import annotations

import argparse
import base64
import asyncio
import contextlib
import hashlib
import hmac
import http
import json
import math
import random
import re
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Literal, Union

from aiohttp import web

try:  # orjson is a corral dependency; the fake only uses it for speed under load.
    import orjson

    def _dumps(obj: Any) -> bytes:
        return orjson.dumps(obj)

    def _loads(raw: bytes) -> Any:
        return orjson.loads(raw)

except ImportError:  # pragma: no cover - exercised only without orjson

    def _dumps(obj: Any) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    def _loads(raw: bytes) -> Any:
        return json.loads(raw)


__all__ = [
    "ApiKind",
    "Blackhole",
    "FakeServer",
    "Latency",
    "OLLAMA_BUSY_MESSAGE",
    "Responder",
    "run_fake_servers_cli",
]

ApiKind = Literal["ollama", "openai"]
Body = dict[str, Any]
#: Seconds per request, or a function of the request body (lets a test make some prompts slow).
Latency = Union[float, Callable[[Body], float]]
#: Produces the generated text for a request body.
Responder = Callable[[Body], str]

#: Ollama's ErrMaxQueue text (server/sched.go), two spaces included.
OLLAMA_BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"

_HOST = "127.0.0.1"  # never anything else: tests must not talk to the network
_MODIFIED_AT = "2025-03-14T09:26:53.589793Z"
_CREATED = 1741944413
_CHAT_PATHS = frozenset({"/api/chat", "/v1/chat/completions"})
_EMBED_INPUT_PATHS = frozenset({"/api/embed", "/v1/embeddings"})
_PROMPT_PATHS = frozenset({"/api/generate", "/api/embeddings", "/v1/completions"})
_TOKEN_RE = re.compile(r"\s*\S+")
_INFERENCE_PATHS = _CHAT_PATHS | _EMBED_INPUT_PATHS | _PROMPT_PATHS


class _Reply(Exception):
    """An early HTTP answer (errors, mostly) raised from deep inside a handler."""

    def __init__(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.payload = payload
        self.headers = headers or {}


# --------------------------------------------------------------------------------------------------
# Pure helpers: text, names, vectors, schemas. Deterministic so tests can predict every answer.
# --------------------------------------------------------------------------------------------------


def _now_rfc3339() -> str:
    """Go's time.Time JSON form, as Ollama writes ``created_at``."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _text_of(content: Any) -> str:
    """Message content as text: a string, or OpenAI's list of ``{"type": "text", "text"}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _count_tokens(text: str) -> int:
    """The fake's tokenizer: whitespace-separated words."""
    return len(text.split())


def _messages_tokens(messages: Any) -> int:
    if not isinstance(messages, list):
        return 0
    return sum(_count_tokens(_text_of(m.get("content"))) for m in messages if isinstance(m, dict))


def _limit_tokens(text: str, limit: int | None) -> tuple[str, int, bool]:
    """Cut ``text`` to ``limit`` tokens. Returns (text, token count, truncated?)."""
    tokens = _TOKEN_RE.findall(text)
    if limit is not None and 0 < limit < len(tokens):
        return "".join(tokens[:limit]), limit, True
    return text, len(tokens), False


def _stream_pieces(text: str) -> list[str]:
    """Split an answer into the per-token pieces a streaming server sends; they join back to it."""
    pieces = _TOKEN_RE.findall(text)
    tail = text[len("".join(pieces)):]
    if tail:
        pieces.append(tail)
    return pieces


def _token_ids(text: str) -> list[int]:
    """Stable fake token ids (Ollama's deprecated ``context`` field)."""
    return [int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "big") % 128000
            for t in text.split()]


def _ollama_full_name(name: str) -> str:
    """Ollama lists an untagged model "x" as "x:latest"."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _ollama_key(name: str) -> str:
    """Matching key: case-insensitive, default registry prefix dropped, ":latest" implied."""
    key = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return _ollama_full_name(key)


def _is_embedding_model(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in ("embed", "minilm", "bge"))


def _family(name: str) -> str:
    lowered = name.lower()
    for prefix, family in (("qwen3", "qwen3"), ("qwen", "qwen2"), ("gemma3", "gemma3"),
                           ("gemma", "gemma2"), ("phi", "phi3"), ("nomic", "nomic-bert"),
                           ("mxbai", "bert"), ("all-minilm", "bert"), ("bge", "bert")):
        if lowered.startswith(prefix):
            return family
    return "llama"


def _parameter_size(name: str) -> str:
    match = re.search(r"[:\-_](\d+(?:\.\d+)?)([bm])\b", name.lower())
    return f"{match.group(1)}{match.group(2).upper()}" if match else "3.2B"


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


@lru_cache(maxsize=65536)
def _embedding_cached(text: str, dim: int) -> tuple[float, ...]:
    values: list[float] = []
    block = 0
    while len(values) < dim:
        digest = hashlib.sha256(f"{block}\x00{text}".encode()).digest()
        values.extend(v / 2**31 - 1.0 for v in struct.unpack(">8I", digest))
        block += 1
    values = values[:dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return tuple(v / norm for v in values)


def fake_embedding(text: str, dim: int) -> list[float]:
    """The unit vector the fake returns for ``text``: identical text, identical vector."""
    return list(_embedding_cached(text, dim))


def _dummy_for_schema(schema: Any, echo: str, root: Any, depth: int = 0) -> Any:
    """A value that satisfies the simple parts of a JSON Schema (type, enum, const, properties)."""
    if not isinstance(schema, dict) or depth > 16:
        return None
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, dict) else None
        return _dummy_for_schema(target, echo, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            for option in options:  # prefer a non-null branch
                if not (isinstance(option, dict) and option.get("type") == "null"):
                    return _dummy_for_schema(option, echo, root, depth + 1)
            return None
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None and isinstance(schema.get("properties"), dict):
        kind = "object"
    if kind == "object":
        props = schema.get("properties")
        if not isinstance(props, dict):
            return {}
        return {key: _dummy_for_schema(sub, echo, root, depth + 1) for key, sub in props.items()}
    if kind == "array":
        count = schema.get("minItems", 0)
        count = count if isinstance(count, int) and 0 < count <= 8 else 0
        return [_dummy_for_schema(schema.get("items", {}), echo, root, depth + 1)
                for _ in range(count)]
    if kind == "integer":
        return int(schema.get("minimum", 0)) if isinstance(schema.get("minimum"), (int, float)) else 0
    if kind == "number":
        return float(schema["minimum"]) if isinstance(schema.get("minimum"), (int, float)) else 0.0
    if kind == "boolean":
        return False
    if kind == "null":
        return None
    return echo  # "string" and anything unknown


def prompts_of(path: str, body: Body) -> list[str]:
    """The prompt text(s) a recorded request is "about": what ``count_by_prompt`` counts."""
    if path in _CHAT_PATHS:
        text = _last_user_text(body.get("messages"))
        return [text] if text else []
    key = "input" if path in _EMBED_INPUT_PATHS else "prompt" if path in _PROMPT_PATHS else None
    if key is None:
        return []
    value = body.get(key)
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _format_retry_after(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------------


class FakeServer:
    """A fake Ollama or OpenAI-compatible server on 127.0.0.1, in its own thread and event loop.

    Construct, then ``start()`` (or use as a context manager). Fault-injection attributes
    (``fail_rate``, ``fail_status``, ``retry_after``, ``hang``, ``drop_rate``, ``slow_body``,
    ``latency``, ``responder``, ``loading``, ``missing_paths``) are plain attributes read on every
    request, so a test can flip them at any moment from its own thread.

    Constructor arguments:
      api: "ollama" (native /api/* plus Ollama's /v1 compatibility) or "openai" (vLLM-like;
        llama.cpp-like with ``llamacpp=True``, which adds /props and ``timings``).
      models: served names; Ollama matches "x" and "x:latest" alike, case-insensitively.
      latency: seconds per inference request (or ``f(body) -> seconds``), spent holding a slot.
      slots: concurrent requests processed (OLLAMA_NUM_PARALLEL, llama.cpp ``-np``); the rest wait.
        None = unlimited. A mapping ``{model: n}`` gives each model its own slots (and its own
        ``max_queue``), as Ollama's runners do with several models loaded; chat and generate only.
      max_queue: with ``slots``, how many may wait; one more gets 503 "server busy".
      responder: ``f(body) -> text``; default ``"echo: <last user message or prompt>"``, or a JSON
        answer when the request asks for JSON (``format`` / ``response_format``).
      api_key: require ``Authorization: Bearer <key>`` (401 otherwise).
      strict_models: OpenAI mode only; False serves any model name, like llama.cpp.
      max_context_tokens: OpenAI mode refuses longer prompts with vLLM's 400; Ollama truncates.
      seed: seeds the RNG behind ``fail_rate`` and ``drop_rate``, so failures are reproducible.

    Faults: ``fail_next(n)`` then ``fail_rate`` fail valid inference requests (after the 400/404
    checks) with ``fail_status`` and an optional ``Retry-After``; ``hang`` holds requests until the
    client leaves or the server stops; ``drop_rate`` sends 200 and part of the body, then resets the
    connection; ``slow_body`` dribbles a 200 body over that many seconds (``slow_rate`` of them);
    ``endless_whitespace`` answers whitespace up to the token limit (never ending without one, on
    Ollama); ``fail_message`` sets the injected errors' text; ``kill()``/``revive()``.

    Counting rules: ``requests``, ``count_by_prompt()``, ``status_counts``, ``completed``,
    ``in_flight`` and the fault injections concern *inference* calls only (chat, generate,
    completions, embed/embeddings) -- never the probes (/api/tags, /v1/models, /health, ...), which
    ``path_counts`` counts instead. ``in_flight`` counts requests holding a slot (being processed),
    not those queued for one (``queued``).
    """

    def __init__(
        self,
        api: ApiKind = "ollama",
        models: Sequence[str] = ("llama3.2",),
        latency: Latency = 0.0,
        slots: int | Mapping[str, int] | None = None,
        max_queue: int | None = None,
        responder: Responder | None = None,
        port: int = 0,
        api_key: str | None = None,
        version: str = "0.6.2",
        embedding_dim: int = 8,
        *,
        llamacpp: bool = False,
        strict_models: bool = True,
        max_context_tokens: int | None = None,
        seed: int = 0,
    ) -> None:
        if api not in ("ollama", "openai"):
            raise ValueError(f"api must be 'ollama' or 'openai', not {api!r}")
        if isinstance(models, str):
            models = (models,)
        if not models:
            raise ValueError("at least one model is needed")
        if slots is not None and min(slots.values() if isinstance(slots, Mapping) else [slots]) < 1:
            raise ValueError("slots must be >= 1 or None")
        self.api: ApiKind = api
        self.models: tuple[str, ...] = tuple(models)
        self.slots = slots
        self.max_queue = max_queue
        self.api_key = api_key
        self.version = version
        self.embedding_dim = embedding_dim
        self.llamacpp = llamacpp
        self.strict_models = strict_models
        self.max_context_tokens = max_context_tokens

        # Behaviour, read per request (safe to change from the test thread at any time).
        self.latency: Latency = latency
        self.responder: Responder | None = responder
        self.fail_rate: float = 0.0
        self.fail_status: int = 503
        #: The error text of injected failures (default: the status phrase), e.g. OLLAMA_BUSY_MESSAGE.
        self.fail_message: str | None = None
        self.retry_after: float | None = None
        self.hang: bool = False
        self.drop_rate: float = 0.0
        self.slow_body: float = 0.0
        #: With ``slow_body``: the share of answers dribbled (the rest answer at once).
        self.slow_rate: float = 1.0
        #: Ollama's JSON-mode failure: the answer is whitespace until the token limit (num_predict /
        #: max_tokens; on OpenAI servers the context, as vLLM). Ollama with no limit never stops.
        self.endless_whitespace: bool = False
        #: A file that gets one line per inference request ("path<TAB>prompt"), so a test can count
        #: what a server *process* received even after it was killed.
        self.record_path: str | None = None
        #: llama.cpp while loading its model: /health and inference answer 503 "Loading model".
        self.loading: bool = False
        #: OpenAI mode: answer ``encoding_format: "base64"`` embeddings (False: refuse it with a 400,
        #: as servers that only know floats do).
        self.base64_embeddings: bool = True
        #: Paths that answer as if this server version lacked them (e.g. {"/api/embed"}).
        self.missing_paths: set[str] = set()
        #: Model name -> revision: set one to stand for new weights under the same name (a new
        #: `ollama pull`, another GGUF file); digests, sizes and file names change with it.
        self.revisions: dict[str, str] = {}
        #: Ollama: seconds of ``load_duration`` the next generation reports (a cold model), once.
        self.cold_load: float = 0.0

        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fail_queue: deque[tuple[int, float | None]] = deque()
        self._ollama_names = {_ollama_key(m): _ollama_full_name(m) for m in self.models}

        # Statistics (guarded by _lock).
        self._requests: list[tuple[str, Body]] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._queued = 0
        self._queued_for: Counter[str | None] = Counter()  # per model with per-model slots
        self._completed = 0
        self._dropped = 0
        self._status_counts: Counter[int] = Counter()
        self._path_counts: Counter[str] = Counter()

        # Event-loop side (touched only from the server thread once started).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._sem: asyncio.Semaphore | None = None
        self._model_sems: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---------------------------------------------------------------- lifecycle (test thread)

    @property
    def port(self) -> int:
        """The bound port (the real one once started, even if constructed with port=0)."""
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:43121`` (no trailing slash, no /v1)."""
        return f"http://{_HOST}:{self._port}"

    @property
    def alive(self) -> bool:
        """True while listening (started and not killed)."""
        return self._site is not None

    def start(self) -> FakeServer:
        """Start the loop thread and listen. Returns self, so ``srv = FakeServer().start()`` works."""
        if self._thread is not None:
            raise RuntimeError("FakeServer already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"FakeServer-{self.api}", daemon=True)
        self._thread.start()
        ready.wait(5)
        try:
            self._call(self._astart())
        except BaseException:
            self._shutdown_loop()
            raise
        return self

    def stop(self) -> None:
        """Abort every connection, close the socket, end the loop thread. Idempotent."""
        if self._loop is None:
            return
        try:
            self._call(self._astop(), timeout=10)
        finally:
            self._shutdown_loop()

    def kill(self) -> None:
        """Die like a SIGKILLed server: stop listening (connects are refused) and reset every open
        connection, cancelling requests in flight. ``revive()`` brings it back on the same port."""
        self._require_started()
        self._call(self._akill())

    def revive(self) -> None:
        """Listen again on the same port, with the same settings and statistics."""
        self._require_started()
        if self.alive:
            return
        self._call(self._alisten())

    def __enter__(self) -> FakeServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive else "stopped"
        return f"<FakeServer {self.api} {self.url} {state} models={list(self.models)}>"

    # ---------------------------------------------------------------- fault injection & stats

    def fail_next(self, n: int = 1, status: int = 503, retry_after: float | None = None) -> None:
        """Fail exactly the next ``n`` inference requests with ``status`` (before fail_rate)."""
        with self._lock:
            self._fail_queue.extend([(status, retry_after)] * n)

    @property
    def requests(self) -> list[tuple[str, Body]]:
        """(path, body) of every parsed inference request, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def count_by_prompt(self) -> Counter[str]:
        """How many times each prompt was received: last user message (chat), prompt (generate,
        completions, embeddings) or each input (embed). Failed attempts count: retries show up."""
        counts: Counter[str] = Counter()
        for path, body in self.requests:
            counts.update(prompts_of(path, body))
        return counts

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    @property
    def queued(self) -> int:
        """Requests currently waiting for a free slot."""
        with self._lock:
            return self._queued

    @property
    def completed(self) -> int:
        """Successful inference answers sent in full."""
        with self._lock:
            return self._completed

    @property
    def dropped(self) -> int:
        """Answers cut off on purpose by ``drop_rate``."""
        with self._lock:
            return self._dropped

    @property
    def status_counts(self) -> Counter[int]:
        """Status codes sent for inference requests (a copy)."""
        with self._lock:
            return Counter(self._status_counts)

    @property
    def path_counts(self) -> Counter[str]:
        """Hits per path, every endpoint included (probes too)."""
        with self._lock:
            return Counter(self._path_counts)

    def reset_stats(self) -> None:
        """Forget recorded requests and counters (``in_flight``/``queued`` stay live; the peak
        restarts from the current in-flight count)."""
        with self._lock:
            self._requests.clear()
            self._max_in_flight = self._in_flight
            self._completed = 0
            self._dropped = 0
            self._status_counts.clear()
            self._path_counts.clear()

    def wait_until(self, predicate: Callable[[FakeServer], bool], timeout: float = 5.0,
                   interval: float = 0.005) -> bool:
        """Poll ``predicate(self)`` until true or ``timeout``; returns the last result."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)

    # ---------------------------------------------------------------- loop plumbing

    def _require_started(self) -> None:
        if self._loop is None:
            raise RuntimeError("FakeServer not started")

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _shutdown_loop(self) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None:
            thread.join(10)
        if not loop.is_running():
            loop.close()

    async def _astart(self) -> None:
        if isinstance(self.slots, Mapping):
            self._model_sems = {_ollama_key(m): asyncio.Semaphore(n) for m, n in self.slots.items()}
        else:
            self._sem = asyncio.Semaphore(self.slots) if self.slots else None
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
        self._add_routes(app)
        # handler_cancellation: a client that hangs up cancels its request, as in Ollama.
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                     shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        await self._alisten()

    async def _alisten(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, self._port))
            sock.listen(1024)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock)
        await site.start()
        self._site = site

    async def _akill(self) -> None:
        site, self._site = self._site, None
        if site is not None:
            await site.stop()  # closes the listening socket: new connects are refused
        if self._runner is not None and self._runner.server is not None:
            for handler in self._runner.server.connections:
                transport = handler.transport
                if transport is not None:
                    transport.abort()  # RST: clients see the connection reset
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def _astop(self) -> None:
        await self._akill()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ---------------------------------------------------------------- HTTP plumbing

    def _add_routes(self, app: web.Application) -> None:
        r = app.router
        if self.api == "ollama":
            r.add_get("/", self._h_root)
            r.add_get("/api/version", self._h_version)
            r.add_get("/api/tags", self._h_tags)
            r.add_get("/api/ps", self._h_ps)
            r.add_post("/api/show", self._h_show)
            r.add_post("/api/pull", self._h_pull)
            r.add_post("/api/chat", self._h_ollama_chat)
            r.add_post("/api/generate", self._h_ollama_generate)
            r.add_post("/api/embed", self._h_ollama_embed)
            r.add_post("/api/embeddings", self._h_ollama_embeddings)
        else:
            r.add_get("/health", self._h_health)
            r.add_get("/props", self._h_props)
            r.add_get("/version", self._h_vllm_version)
        # Ollama serves the OpenAI-compatible API too.
        r.add_get("/v1/models", self._h_models)
        r.add_post("/v1/chat/completions", self._h_openai_chat)
        r.add_post("/v1/completions", self._h_openai_completions)
        r.add_post("/v1/embeddings", self._h_openai_embeddings)

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        with self._lock:
            self._path_counts[request.path] += 1
        try:
            if request.path in self.missing_paths:
                raise web.HTTPNotFound()
            return await handler(request)
        except _Reply as reply:
            if request.path in _INFERENCE_PATHS:
                self._count_status(reply.status)
            return web.Response(status=reply.status, body=_dumps(reply.payload),
                                content_type="application/json", charset="utf-8",
                                headers=reply.headers)
        except web.HTTPNotFound:
            return self._route_not_found()
        finally:
            if task is not None:
                self._tasks.discard(task)

    def _route_not_found(self) -> web.Response:
        if self.api == "ollama":  # gin's text answer
            return web.Response(status=404, text="404 page not found")
        if self.llamacpp:
            return web.Response(status=404, body=_dumps({"error": {
                "code": 404, "message": "File Not Found", "type": "not_found_error"}}),
                content_type="application/json")
        return web.Response(status=404, body=b'{"detail":"Not Found"}', content_type="application/json")

    def _count_status(self, status: int) -> None:
        with self._lock:
            self._status_counts[status] += 1

    @staticmethod
    def _openai_style(request: web.Request) -> bool:
        return request.path.startswith("/v1/") or request.path in ("/health", "/props")

    def _error(self, request: web.Request, status: int, message: str, *,
               err_type: str | None = None, param: str | None = None,
               headers: dict[str, str] | None = None) -> _Reply:
        """An error in the dialect of the endpoint: Ollama's flat {"error": msg} on /api/*, the
        OpenAI/vLLM {"error": {message, type, param, code}} object on /v1/*."""
        if not self._openai_style(request):
            return _Reply(status, {"error": message}, headers)
        if err_type is None:
            err_type = {400: "BadRequestError", 401: "authentication_error", 404: "NotFoundError",
                        429: "rate_limit_error"}.get(status, "server_error" if status >= 500
                                                     else "invalid_request_error")
        return _Reply(status, {"error": {"message": message, "type": err_type, "param": param,
                                         "code": status}}, headers)

    def _check_auth(self, request: web.Request) -> None:
        if not self.api_key:
            return
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            if self._openai_style(request):
                raise self._error(request, 401, "Invalid API key", err_type="authentication_error")
            raise _Reply(401, {"error": "unauthorized"})

    async def _read_body(self, request: web.Request) -> Body:
        raw = await request.read()
        if not raw.strip():
            raise self._error(request, 400, "missing request body")
        try:
            body = _loads(raw)
        except ValueError as exc:
            raise self._error(request, 400, f"invalid JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise self._error(request, 400, f"json: cannot unmarshal {type(body).__name__} into "
                                            "a request object")
        return body

    async def _begin_inference(self, request: web.Request) -> Body:
        """Auth, parse and record an inference request."""
        self._check_auth(request)
        body = await self._read_body(request)
        with self._lock:
            self._requests.append((request.path, body))
            if self.record_path:
                prompts = " | ".join(prompts_of(request.path, body)).replace("\n", " ")
                with open(self.record_path, "a", encoding="utf-8") as record:
                    record.write(f"{request.path}\t{prompts}\n")
        if self.loading and self.api == "openai":
            raise _Reply(503, {"error": {"code": 503, "message": "Loading model",
                                         "type": "unavailable_error"}})
        return body

    def _draw(self, rate: float) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def _inject_failure(self, request: web.Request) -> None:
        with self._lock:
            if self._fail_queue:
                status, retry_after = self._fail_queue.popleft()
            elif self.fail_rate > 0 and self._rng.random() < self.fail_rate:
                status, retry_after = self.fail_status, self.retry_after
            else:
                return
        headers = {"Retry-After": _format_retry_after(retry_after)} if retry_after is not None else None
        message = self.fail_message
        if message is None:
            try:
                phrase = http.HTTPStatus(status).phrase
            except ValueError:
                phrase = "Error"
            message = f"{phrase} (injected by fake server)"
        raise self._error(request, status, message, headers=headers)

    @contextlib.asynccontextmanager
    async def _slot(self, request: web.Request, model: str | None = None) -> AsyncIterator[None]:
        """Hold one of ``slots`` (like OLLAMA_NUM_PARALLEL); queue or refuse when all are busy."""
        lane = _ollama_key(model) if model is not None and self._model_sems else None
        sem = self._sem if lane is None else self._model_sems.get(lane)
        if sem is not None:
            if sem.locked() and self.max_queue is not None and self._queued_for[lane] >= self.max_queue:
                raise self._error(request, 503, OLLAMA_BUSY_MESSAGE, err_type="server_error")
            with self._lock:
                self._queued += 1
                self._queued_for[lane] += 1
            try:
                await sem.acquire()
            finally:
                with self._lock:
                    self._queued -= 1
                    self._queued_for[lane] -= 1
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
            if sem is not None:
                sem.release()

    async def _work(self, body: Body) -> None:
        """Hang or sleep as configured; runs while holding a slot."""
        if self.hang:
            await asyncio.Event().wait()  # until the client leaves, kill() or stop()
        latency = self.latency
        delay = latency(body) if callable(latency) else latency
        if delay and delay > 0:
            await asyncio.sleep(delay)

    async def _send(self, request: web.Request, parts: list[bytes], content_type: str,
                    streaming: bool) -> web.StreamResponse:
        """Send a 200 answer, honouring drop_rate (cut the body, reset the connection) and
        slow_body (dribble the body over that many seconds)."""
        drop = self._draw(self.drop_rate)
        slow = self.slow_body if self.slow_body and (
            self.slow_rate >= 1 or self._draw(self.slow_rate)) else 0.0
        if not drop and not slow and not streaming:
            self._count_status(200)
            with self._lock:
                self._completed += 1
            return web.Response(body=parts[0], content_type=content_type.split(";")[0],
                                charset="utf-8" if "charset" in content_type else None)
        payload = b"".join(parts)
        resp = web.StreamResponse(status=200)
        resp.headers["Content-Type"] = content_type
        if not streaming:
            resp.content_length = len(payload)  # so a truncated body is detectable
        await resp.prepare(request)
        self._count_status(200)
        if drop:
            if streaming and len(parts) > 1:
                cut = len(b"".join(parts[: len(parts) // 2]))
            else:
                cut = max(1, len(payload) // 2)
            payload = payload[:cut]
        if slow:  # ~20 pieces spread over `slow` seconds
            size = math.ceil(len(payload) / max(1, min(20, len(payload))))
            chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
        elif streaming and not drop:
            chunks = parts
        else:
            chunks = [payload]
        for index, chunk in enumerate(chunks):
            if slow:
                await asyncio.sleep(slow / len(chunks))
            if index == len(chunks) - 1 and not drop:
                break
            await resp.write(chunk)
        if drop:
            with self._lock:
                self._dropped += 1
            transport = request.transport
            for _ in range(100):  # let the partial body leave before the reset
                if transport is None or transport.get_write_buffer_size() == 0:
                    break
                await asyncio.sleep(0.001)
            if transport is not None:
                transport.abort()
            return resp
        # Count before the last byte leaves: a client holding the whole answer must see it counted.
        with self._lock:
            self._completed += 1
        try:
            await resp.write(chunks[-1])
            await resp.write_eof()
        except BaseException:
            with self._lock:
                self._completed -= 1
            raise
        return resp

    async def _runaway(self, limit: int | None) -> tuple[str, int, bool]:
        """Whitespace until ``limit`` tokens: (text, tokens, cut). With no limit (Ollama's default
        num_predict -1) it never ends, as on the real server: the client must give up."""
        if limit is None or limit <= 0:
            await asyncio.Event().wait()  # until the client leaves, kill() or stop()
        assert limit is not None
        return "\n" * limit, limit, True

    def _answer(self, body: Body, prompt: str, json_schema: Any, json_mode: bool,
                request: web.Request) -> str:
        responder = self.responder
        if responder is not None:
            try:
                return str(responder(body))
            except Exception as exc:  # a test's responder blowing up is a server error
                raise self._error(request, 500, f"responder failed: {exc!r}") from None
        if json_schema is not None:
            root = json_schema
            value = _dummy_for_schema(json_schema, f"echo: {prompt}", root)
            return json.dumps(value if value is not None else {"echo": prompt})
        if json_mode:
            return json.dumps({"echo": prompt})
        return f"echo: {prompt}"

    # ---------------------------------------------------------------- Ollama: probes

    async def _h_root(self, request: web.Request) -> web.Response:
        return web.Response(text="Ollama is running")

    async def _h_version(self, request: web.Request) -> web.Response:
        return self._json({"version": self.version})

    def _weights(self, name: str) -> str:
        """What the served weights' digest is computed from: the name, plus its revision if any."""
        revision = self.revisions.get(name) or self.revisions.get(name.split(":")[0])
        return f"{name}@{revision}" if revision else name

    def _details(self, name: str) -> dict[str, Any]:
        family = _family(name)
        return {"parent_model": "", "format": "gguf", "family": family, "families": [family],
                "parameter_size": _parameter_size(name),
                "quantization_level": "F16" if _is_embedding_model(name) else "Q4_K_M"}

    def _size(self, name: str) -> int:
        return 100_000_000 + int(_digest(self._weights(name))[:8], 16) % 4_000_000_000

    async def _h_tags(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        models = []
        for name in self._ollama_names.values():
            models.append({"name": name, "model": name, "modified_at": _MODIFIED_AT,
                           "size": self._size(name), "digest": _digest(self._weights(name)),
                           "details": self._details(name)})
        return self._json({"models": models})

    async def _h_ps(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        models = [{"name": n, "model": n, "size": self._size(n), "digest": _digest(self._weights(n)),
                   "details": self._details(n), "expires_at": "2099-01-01T00:00:00Z",
                   "size_vram": self._size(n)} for n in self._ollama_names.values()]
        return self._json({"models": models})

    async def _h_show(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        body = await self._read_body(request)
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise self._error(request, 400, "model is required")
        name = self._ollama_names.get(_ollama_key(model))
        if name is None:
            raise self._error(request, 404, f"model '{model}' not found")
        family = _family(name)
        template = "{{ if .System }}<|system|>{{ .System }}{{ end }}<|user|>{{ .Prompt }}<|assistant|>"
        return self._json({
            "license": "fake license",
            "modelfile": (f"# Modelfile generated by \"ollama show\"\n# FROM {name}\n\n"
                          f"FROM /root/.ollama/models/blobs/sha256-{_digest(self._weights(name))}\n"
                          f"TEMPLATE \"\"\"{template}\"\"\"\nPARAMETER stop \"<|user|>\"\n"),
            "parameters": 'stop                           "<|user|>"',
            "template": template,
            "details": self._details(name),
            "model_info": {
                "general.architecture": family,
                "general.basename": name.split(":")[0],
                "general.parameter_count": 3_212_749_888,
                "general.quantization_version": 2,
                f"{family}.context_length": self.max_context_tokens or 131072,
                f"{family}.embedding_length": self.embedding_dim,
            },
            "capabilities": ["embedding"] if _is_embedding_model(name) else ["completion"],
            "modified_at": _MODIFIED_AT,
        })

    async def _h_pull(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/pull``: the fake registry has every model; a pulled one is served from then on.

        As Ollama: ``model`` (or the older ``name``); by default a stream of NDJSON progress lines
        ending in ``{"status": "success"}``, with ``"stream": false`` only that last line. Names
        containing "missing" stand for models the registry lacks (Ollama's 500 "file does not exist").
        """
        self._check_auth(request)
        body = await self._read_body(request)
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model:
            raise self._error(request, 400, "model is required")
        if "missing" in model:
            raise self._error(request, 500, "pull model manifest: file does not exist")
        with self._lock:
            self._ollama_names[_ollama_key(model)] = _ollama_full_name(model)
            if model not in self.models:
                self.models = (*self.models, model)
        if body.get("stream") is False:
            return self._json({"status": "success"})
        digest = _digest(self._weights(_ollama_full_name(model)))
        size = self._size(_ollama_full_name(model))
        lines = [{"status": "pulling manifest"},
                 {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}", "total": size,
                  "completed": size},
                 {"status": "verifying sha256 digest"}, {"status": "writing manifest"},
                 {"status": "success"}]
        return web.Response(body=b"".join(_dumps(line) + b"\n" for line in lines),
                            content_type="application/x-ndjson")

    # ---------------------------------------------------------------- Ollama: inference

    def _ollama_model(self, request: web.Request, body: Body, *, pull_hint: bool) -> str:
        """The requested model as echoed back, or a 400/404 like Ollama's."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise self._error(request, 400, "model is required")
        if _ollama_key(model) not in self._ollama_names:
            # Chat/generate check the manifest first ("model 'x' not found"); embed endpoints fail
            # in the scheduler, whose wording carries the pull hint (server/routes.go).
            message = (f'model "{model}" not found, try pulling it first' if pull_hint
                       else f"model '{model}' not found")
            raise self._error(request, 404, message)
        return model

    def _ollama_options(self, request: web.Request, body: Body) -> tuple[int | None, Any, bool]:
        """Validate options/format/stream: returns (num_predict, json schema, json mode)."""
        options = body.get("options")
        if options is not None and not isinstance(options, dict):
            raise self._error(request, 400, "json: cannot unmarshal options into map[string]any")
        num_predict = (options or {}).get("num_predict")
        if num_predict is not None and not _is_int(num_predict):
            raise self._error(request, 400, "option \"num_predict\" must be of type integer")
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise self._error(request, 400, "json: cannot unmarshal stream into bool")
        fmt = body.get("format")
        if fmt in (None, ""):
            return num_predict, None, False
        if fmt == "json":
            return num_predict, None, True
        if isinstance(fmt, dict):
            return num_predict, fmt, True
        raise self._error(request, 400, 'invalid format: expected "json" or a valid JSON schema')

    def _ollama_stats(self, prompt_tokens: int, eval_count: int, started: float) -> dict[str, int]:
        load = 2_154_458
        with self._lock:
            if self.cold_load:
                load, self.cold_load = int(self.cold_load * 1e9), 0.0
        prompt_eval = 50_000 + 150_000 * prompt_tokens
        eval_ = 1_000_000 + 8_000_000 * eval_count  # ~125 tokens/s
        elapsed = int((time.perf_counter() - started) * 1e9)
        return {"total_duration": max(elapsed, load + prompt_eval + eval_ + 250_000),
                "load_duration": load, "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": prompt_eval, "eval_count": eval_count,
                "eval_duration": eval_}

    async def _ollama_generation(self, request: web.Request, chat: bool) -> web.StreamResponse:
        started = time.perf_counter()
        body = await self._begin_inference(request)
        model = self._ollama_model(request, body, pull_hint=False)
        if chat:
            messages = body.get("messages")
            if messages is not None and not (
                    isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
                raise self._error(request, 400, "json: cannot unmarshal messages into []api.Message")
            prompt = _last_user_text(messages)
            prompt_tokens = _messages_tokens(messages)
            empty = not messages
        else:
            raw_prompt = body.get("prompt", "")
            if not isinstance(raw_prompt, str):
                raise self._error(request, 400, "json: cannot unmarshal prompt into string")
            prompt = raw_prompt
            system = body.get("system")
            prompt_tokens = _count_tokens(prompt) + (_count_tokens(system) if isinstance(system, str) else 0)
            empty = prompt == ""
        num_predict, schema, json_mode = self._ollama_options(request, body)
        if _is_embedding_model(model):
            raise self._error(request, 400, f'"{model}" does not support {"chat" if chat else "generate"}')
        if self.max_context_tokens:  # Ollama truncates to num_ctx instead of refusing
            prompt_tokens = min(prompt_tokens, self.max_context_tokens)
        self._inject_failure(request)
        async with self._slot(request, model):
            await self._work(body)
            stream = body.get("stream") is not False
            if empty:  # Ollama's "load the model" request
                final: Body = {"model": model, "created_at": _now_rfc3339()}
                final["message" if chat else "response"] = (
                    {"role": "assistant", "content": ""} if chat else "")
                final.update({"done_reason": "load", "done": True})
                return await self._send_ollama(request, [final], stream)
            if self.endless_whitespace and json_mode:
                text, eval_count, cut = await self._runaway(num_predict)
            else:
                text = self._answer(body, prompt, schema, json_mode, request)
                text, eval_count, cut = _limit_tokens(text, num_predict)
            stats = self._ollama_stats(max(prompt_tokens, 1), eval_count, started)
            reason = "length" if cut else "stop"
            created = _now_rfc3339()
            if chat:
                final = {"model": model, "created_at": created,
                         "message": {"role": "assistant", "content": text if not stream else ""},
                         "done_reason": reason, "done": True, **stats}
            else:
                final = {"model": model, "created_at": created, "response": text if not stream else "",
                         "done": True, "done_reason": reason,
                         "context": _token_ids(prompt + " " + text), **stats}
            if not stream:
                return await self._send_ollama(request, [final], False)
            chunks: list[Body] = []
            for piece in _stream_pieces(text):
                chunk: Body = {"model": model, "created_at": created}
                if chat:
                    chunk["message"] = {"role": "assistant", "content": piece}
                else:
                    chunk["response"] = piece
                chunk["done"] = False
                chunks.append(chunk)
            chunks.append(final)
            return await self._send_ollama(request, chunks, True)

    async def _send_ollama(self, request: web.Request, objects: list[Body],
                           stream: bool) -> web.StreamResponse:
        if stream:
            return await self._send(request, [_dumps(o) + b"\n" for o in objects],
                                    "application/x-ndjson", streaming=True)
        return await self._send(request, [_dumps(objects[-1])],
                                "application/json; charset=utf-8", streaming=False)

    async def _h_ollama_chat(self, request: web.Request) -> web.StreamResponse:
        return await self._ollama_generation(request, chat=True)

    async def _h_ollama_generate(self, request: web.Request) -> web.StreamResponse:
        return await self._ollama_generation(request, chat=False)

    def _dimensions(self, request: web.Request, body: Body) -> int:
        dims = body.get("dimensions")
        if dims is None:
            return self.embedding_dim
        if not _is_int(dims) or dims < 1:
            raise self._error(request, 400, "dimensions must be a positive integer")
        return min(dims, self.embedding_dim)

    async def _h_ollama_embed(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        body = await self._begin_inference(request)
        raw = body.get("input")
        if isinstance(raw, str):
            inputs = [raw] if raw else []
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        elif raw is None:
            inputs = []
        else:
            raise self._error(request, 400, "invalid input type")
        model = self._ollama_model(request, body, pull_hint=True)
        dims = self._dimensions(request, body)
        limit = self.max_context_tokens
        if limit and body.get("truncate") is False and any(_count_tokens(t) > limit for t in inputs):
            raise self._error(request, 400, "the input length exceeds the context length")
        if limit:  # Ollama truncates by default: the vector of the first num_ctx tokens
            inputs = [" ".join(t.split()[:limit]) if _count_tokens(t) > limit else t for t in inputs]
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            vectors = [fake_embedding(text, self.embedding_dim)[:dims] for text in inputs]
            if dims < self.embedding_dim:  # Ollama renormalizes truncated vectors
                vectors = [[v / (math.sqrt(sum(x * x for x in vec)) or 1.0) for v in vec]
                           for vec in vectors]
            tokens = sum(_count_tokens(text) for text in inputs)
            payload: Body = {"model": model, "embeddings": vectors}
            if inputs:
                payload.update({
                    "total_duration": max(int((time.perf_counter() - started) * 1e9),
                                          2_154_458 + 300_000 * len(inputs)),
                    "load_duration": 2_154_458, "prompt_eval_count": tokens})
            return await self._send(request, [_dumps(payload)], "application/json; charset=utf-8",
                                    streaming=False)

    async def _h_ollama_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin_inference(request)
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise self._error(request, 400, "json: cannot unmarshal prompt into string")
        self._ollama_model(request, body, pull_hint=True)
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            vector = fake_embedding(prompt, self.embedding_dim) if prompt else []
            return await self._send(request, [_dumps({"embedding": vector})],
                                    "application/json; charset=utf-8", streaming=False)

    # ---------------------------------------------------------------- OpenAI-compatible

    async def _h_health(self, request: web.Request) -> web.Response:
        if self.loading:
            return web.Response(status=503, body=_dumps({"error": {
                "code": 503, "message": "Loading model", "type": "unavailable_error"}}),
                content_type="application/json")
        return self._json({"status": "ok"})

    async def _h_vllm_version(self, request: web.Request) -> web.Response:
        if self.llamacpp:  # llama.cpp has no /version; vLLM answers {"version": "0.8.5"}
            return self._route_not_found()
        return self._json({"version": self.version})

    def _gguf_file(self, model: str) -> str:
        revision = self.revisions.get(model)
        return f"{model}-{revision}.Q4_K_M.gguf" if revision else f"{model}.Q4_K_M.gguf"

    async def _h_props(self, request: web.Request) -> web.Response:
        if not self.llamacpp:
            return self._route_not_found()
        n_ctx = self.max_context_tokens or 4096
        model = self.models[0]
        return self._json({
            "default_generation_settings": {
                "id": 0, "id_task": -1, "n_ctx": n_ctx, "speculative": False,
                "is_processing": False,
                "params": {"n_predict": -1, "seed": 4294967295, "temperature": 0.8, "top_k": 40,
                           "top_p": 0.95, "min_p": 0.05, "stream": False},
            },
            "total_slots": (sum(self.slots.values()) if isinstance(self.slots, Mapping) else self.slots) or 1,
            "model_alias": model,
            "model_ftype": "Q4_K_M",
            "model_path": f"/models/{self._gguf_file(model)}",
            "modalities": {"vision": False, "audio": False},
            "chat_template": "{% for message in messages %}{{ message.content }}{% endfor %}",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "build_info": f"b0000-fake-{self.version}",
        })

    async def _h_models(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        if self.api == "ollama":
            data = [{"id": n, "object": "model", "created": _CREATED, "owned_by": "library"}
                    for n in self._ollama_names.values()]
        else:
            owner = "llamacpp" if self.llamacpp else "vllm"
            data = []
            for name in self.models:
                entry: Body = {"id": name, "object": "model", "created": _CREATED, "owned_by": owner}
                if self.llamacpp:  # llama.cpp's /v1/models: aliases, and the GGUF's metadata
                    entry["aliases"] = [name]
                    entry["meta"] = {
                        "vocab_type": 2, "n_vocab": 128256, "n_ctx": self.max_context_tokens or 4096,
                        "n_ctx_train": 131072, "n_embd": self.embedding_dim, "n_params": 3_212_749_888,
                        "size": self._size(self._gguf_file(name)), "ftype": "Q4_K_M"}
                else:
                    entry.update({"root": name, "parent": None,
                                  "max_model_len": self.max_context_tokens or 4096})
                data.append(entry)
        return self._json({"object": "list", "data": data})

    def _openai_model(self, request: web.Request, body: Body) -> str:
        model = body.get("model")
        if model is None:
            return self.models[0]  # vLLM and llama.cpp fall back to the served model
        if not isinstance(model, str):
            raise self._error(request, 400, "model must be a string", param="model")
        if self.api == "ollama":
            if _ollama_key(model) not in self._ollama_names:
                raise self._error(request, 404, f'model "{model}" not found, try pulling it first',
                                  err_type="api_error", param="model")
        elif self.strict_models and model not in self.models:
            raise self._error(request, 404, f"The model `{model}` does not exist.",
                              err_type="NotFoundError", param="model")
        return model

    def _openai_sampling(self, request: web.Request, body: Body) -> tuple[int | None, int, Any, bool]:
        """Validate max_tokens/n/seed/response_format: (max_tokens, n, json schema, json mode)."""
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not _is_int(max_tokens) or max_tokens < 1):
            raise self._error(request, 400, f"max_tokens must be at least 1, got {max_tokens}.",
                              param="max_tokens")
        n = body.get("n", 1)
        if n is None:
            n = 1
        if not _is_int(n) or n < 1:
            raise self._error(request, 400, f"n must be at least 1, got {n}.", param="n")
        seed = body.get("seed")
        if seed is not None and not _is_int(seed):
            raise self._error(request, 400, "seed must be an integer", param="seed")
        fmt = body.get("response_format")
        if fmt is None:
            return max_tokens, n, None, False
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind == "text":
            return max_tokens, n, None, False
        if kind == "json_object":
            return max_tokens, n, None, True
        if kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
                raise self._error(request, 400, "response_format.json_schema must be an object "
                                                "with a 'schema'", param="response_format")
            return max_tokens, n, spec.get("schema", {}), True
        raise self._error(request, 400, "response_format.type must be one of 'text', "
                                        "'json_object', 'json_schema'", param="response_format")

    def _check_context(self, request: web.Request, prompt_tokens: int, max_tokens: int | None,
                       chat: bool) -> None:
        limit = self.max_context_tokens
        if limit is None or prompt_tokens <= limit:
            return
        completion = max_tokens or 0
        if self.llamacpp:  # tools/server/server.cpp: the prompt alone does not fit a slot
            raise _Reply(400, {"error": {
                "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": prompt_tokens,
                "n_ctx": limit,
                "message": "the request exceeds the available context size, try increasing it"}})
        if chat:
            message = (f"This model's maximum context length is {limit} tokens. However, you "
                       f"requested {prompt_tokens + completion} tokens ({prompt_tokens} in the "
                       f"messages, {completion} in the completion). Please reduce the length of "
                       "the messages or completion.")
        else:
            message = (f"This model's maximum context length is {limit} tokens, however you "
                       f"requested {prompt_tokens + completion} tokens ({prompt_tokens} in your "
                       f"prompt; {completion} for the completion). Please reduce your prompt; or "
                       "completion length.")
        raise self._error(request, 400, message, err_type="BadRequestError",
                          param="messages" if chat else "prompt")

    def _completion_id(self, prefix: str, body: Body, prompt: str) -> str:
        seed = body.get("seed")
        if seed is None:
            return f"{prefix}-{uuid.uuid4().hex}"
        return f"{prefix}-{hashlib.sha256(f'{seed}:{prompt}'.encode()).hexdigest()[:32]}"

    def _timings(self, prompt_tokens: int, completion_tokens: int) -> dict[str, float | int]:
        prompt_ms = 0.05 + 0.15 * prompt_tokens
        predicted_ms = 1.0 + 8.0 * completion_tokens
        return {"prompt_n": prompt_tokens, "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / max(prompt_tokens, 1),
                "prompt_per_second": 1000.0 * prompt_tokens / prompt_ms,
                "predicted_n": completion_tokens, "predicted_ms": predicted_ms,
                "predicted_per_token_ms": predicted_ms / max(completion_tokens, 1),
                "predicted_per_second": 1000.0 * completion_tokens / predicted_ms}

    async def _h_openai_chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin_inference(request)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) for m in messages):
            raise self._error(request, 400, "messages must be a non-empty list of message objects",
                              param="messages")
        model = self._openai_model(request, body)
        max_tokens, n, schema, json_mode = self._openai_sampling(request, body)
        prompt = _last_user_text(messages)
        prompt_tokens = _messages_tokens(messages)
        self._check_context(request, prompt_tokens, max_tokens, chat=True)
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            if self.endless_whitespace and json_mode:
                room = (self.max_context_tokens or 4096) - prompt_tokens
                text, completion_tokens, cut = await self._runaway(max_tokens or max(room, 1))
            else:
                text = self._answer(body, prompt, schema, json_mode, request)
                text, completion_tokens, cut = _limit_tokens(text, max_tokens)
            reason = "length" if cut else "stop"
            ident = self._completion_id("chatcmpl", body, prompt)
            created = int(time.time())
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens * n,
                     "total_tokens": prompt_tokens + completion_tokens * n}
            if body.get("stream") is True:
                events: list[Body] = []
                head = {"id": ident, "object": "chat.completion.chunk", "created": created,
                        "model": model}
                for index in range(n):
                    events.append({**head, "choices": [{"index": index, "delta": {
                        "role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})
                    for piece in _stream_pieces(text):
                        events.append({**head, "choices": [{"index": index, "delta": {
                            "content": piece}, "logprobs": None, "finish_reason": None}]})
                    events.append({**head, "choices": [{"index": index, "delta": {},
                                                        "logprobs": None, "finish_reason": reason}]})
                return await self._send_sse(request, events, body, head, usage)
            payload: Body = {
                "id": ident, "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": i, "message": {"role": "assistant", "content": text},
                             "logprobs": None, "finish_reason": reason} for i in range(n)],
                "usage": usage,
            }
            if self.llamacpp:
                payload["timings"] = self._timings(prompt_tokens, completion_tokens)
            return await self._send(request, [_dumps(payload)], "application/json", streaming=False)

    async def _h_openai_completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin_inference(request)
        raw = body.get("prompt")
        if isinstance(raw, str):
            prompts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(p, str) for p in raw):
            prompts = list(raw)
        else:
            raise self._error(request, 400, "prompt must be a string or a list of strings",
                              param="prompt")
        model = self._openai_model(request, body)
        max_tokens, n, schema, json_mode = self._openai_sampling(request, body)
        prompt_tokens = sum(_count_tokens(p) for p in prompts)
        self._check_context(request, max(_count_tokens(p) for p in prompts), max_tokens, chat=False)
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            choices = []
            completion_tokens = 0
            for prompt in prompts:
                text = self._answer({**body, "prompt": prompt}, prompt, schema, json_mode, request)
                text, count, cut = _limit_tokens(text, max_tokens)
                for _ in range(n):
                    choices.append({"index": len(choices), "text": text, "logprobs": None,
                                    "finish_reason": "length" if cut else "stop"})
                    completion_tokens += count
            ident = self._completion_id("cmpl", body, prompts[0])
            created = int(time.time())
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                     "total_tokens": prompt_tokens + completion_tokens}
            if body.get("stream") is True:
                head = {"id": ident, "object": "text_completion", "created": created, "model": model}
                events = []
                for choice in choices:
                    for piece in _stream_pieces(choice["text"]):
                        events.append({**head, "choices": [{"index": choice["index"], "text": piece,
                                                            "logprobs": None, "finish_reason": None}]})
                    events.append({**head, "choices": [{"index": choice["index"], "text": "",
                                                        "logprobs": None,
                                                        "finish_reason": choice["finish_reason"]}]})
                return await self._send_sse(request, events, body, head, usage)
            payload: Body = {"id": ident, "object": "text_completion", "created": created,
                             "model": model, "choices": choices, "usage": usage}
            if self.llamacpp:
                payload["timings"] = self._timings(prompt_tokens, completion_tokens)
            return await self._send(request, [_dumps(payload)], "application/json", streaming=False)

    async def _send_sse(self, request: web.Request, events: list[Body], body: Body, head: Body,
                        usage: Body) -> web.StreamResponse:
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            events = [*events, {**head, "choices": [], "usage": usage}]
        parts = [b"data: " + _dumps(e) + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]
        return await self._send(request, parts, "text/event-stream; charset=utf-8", streaming=True)

    async def _h_openai_embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await self._begin_inference(request)
        raw = body.get("input")
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
            inputs = list(raw)
        elif isinstance(raw, list) and all(_is_int(x) for x in raw):
            inputs = [" ".join(map(str, raw))]  # one pre-tokenized input
        else:
            raise self._error(request, 400, "input must be a string or a list of strings",
                              param="input")
        model = self._openai_model(request, body)
        dims = self._dimensions(request, body)
        encoding = body.get("encoding_format", "float")
        if encoding not in (("float", "base64") if self.base64_embeddings else ("float",)):
            raise self._error(request, 400, f"encoding_format {encoding!r} is not supported; "
                              "use 'float'" if not self.base64_embeddings else
                              "encoding_format must be 'float' or 'base64'", param="encoding_format")
        limit = self.max_context_tokens
        too_long = [n for n in map(_count_tokens, inputs) if limit and n > limit]
        if too_long and self.llamacpp:  # llama.cpp's words, with its 500
            raise self._error(request, 500, f"input ({too_long[0]} tokens) is too large to process. "
                              f"increase the physical batch size (current batch size: {limit})",
                              err_type="server_error")
        if too_long:
            raise self._error(request, 400, f"This model's maximum context length is {limit} tokens. "
                              f"However, you requested {too_long[0]} tokens in the input for "
                              "embedding generation. Please reduce the length of the input.",
                              err_type="BadRequestError", param="input")
        self._inject_failure(request)
        async with self._slot(request):
            await self._work(body)
            data = []
            for index, text in enumerate(inputs):
                vector = fake_embedding(text, self.embedding_dim)[:dims]
                if dims < self.embedding_dim:
                    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
                    vector = [x / norm for x in vector]
                if encoding == "base64":  # little-endian float32, as OpenAI, vLLM and llama.cpp send it
                    vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
                data.append({"object": "embedding", "index": index, "embedding": vector})
            tokens = sum(_count_tokens(text) for text in inputs)
            payload = {"object": "list", "data": data, "model": model,
                       "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
            return await self._send(request, [_dumps(payload)], "application/json", streaming=False)

    @staticmethod
    def _json(payload: Any, status: int = 200) -> web.Response:
        return web.Response(status=status, body=_dumps(payload), content_type="application/json",
                            charset="utf-8")


class Blackhole:
    """A port that accepts TCP connections and never sends a byte: not even the probes are answered.

    The socket listens but never calls accept(): the kernel completes each handshake and queues the
    connection, so a client connects and writes happily, then waits for ever.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((_HOST, 0))
        self._sock.listen(512)
        self.port: int = self._sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Blackhole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Command line: one or more fake servers in the foreground, for subprocess tests and benchmarks.
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.fakes.server",
                                description="Run fake Ollama/OpenAI servers until SIGTERM. Prints "
                                            "'READY <url>' per server once listening.")
    p.add_argument("--api", choices=("ollama", "openai"), default="ollama")
    p.add_argument("--port", type=int, default=0, help="0 = a free port (default)")
    p.add_argument("--count", type=int, default=1,
                   help="servers to run; with --port N they use N, N+1, ...")
    p.add_argument("--models", action="append", default=None,
                   help="model name(s); repeat or comma-separate (default llama3.2)")
    p.add_argument("--latency", type=float, default=0.0)
    p.add_argument("--slots", type=int, default=None)
    p.add_argument("--max-queue", type=int, default=None)
    p.add_argument("--api-key", default=None)
    p.add_argument("--version", default="0.6.2")
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument("--llamacpp", action="store_true", help="serve llama.cpp's /props")
    p.add_argument("--no-strict-models", action="store_true", help="accept any model name")
    p.add_argument("--max-context-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fail-rate", type=float, default=0.0)
    p.add_argument("--fail-status", type=int, default=503)
    p.add_argument("--retry-after", type=float, default=None)
    p.add_argument("--drop-rate", type=float, default=0.0)
    p.add_argument("--slow-body", type=float, default=0.0)
    p.add_argument("--slow-rate", type=float, default=1.0)
    p.add_argument("--fail-message", default=None)
    p.add_argument("--endless-whitespace", action="store_true")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--record", default=None,
                   help="append 'path<TAB>prompt' per inference request to this file")
    return p


def run_fake_servers_cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tests.fakes.server``: serve until SIGTERM/SIGINT, exit 0."""
    args = _parser().parse_args(argv)
    models: list[str] = []
    for item in args.models or ["llama3.2"]:
        models.extend(m.strip() for m in item.split(",") if m.strip())
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    servers: list[FakeServer] = []
    try:
        for i in range(max(1, args.count)):
            server = FakeServer(
                api=args.api, models=models, latency=args.latency, slots=args.slots,
                max_queue=args.max_queue, port=args.port + i if args.port else 0,
                api_key=args.api_key, version=args.version, embedding_dim=args.embedding_dim,
                llamacpp=args.llamacpp, strict_models=not args.no_strict_models,
                max_context_tokens=args.max_context_tokens, seed=args.seed + i,
            )
            server.fail_rate, server.fail_status = args.fail_rate, args.fail_status
            server.retry_after, server.drop_rate = args.retry_after, args.drop_rate
            server.slow_body, server.hang = args.slow_body, args.hang
            server.slow_rate, server.fail_message = args.slow_rate, args.fail_message
            server.endless_whitespace, server.record_path = args.endless_whitespace, args.record
            servers.append(server.start())
            print(f"READY {server.url}", flush=True)
        while not stop.wait(0.2):
            pass
    finally:
        for server in servers:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(run_fake_servers_cli())
