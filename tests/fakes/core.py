"""The machinery every fake server shares: settings, counters, and a real aiohttp server on
127.0.0.1 running its own event loop in a background thread.

Why a thread and a real socket: sync pytest tests drive the server with plain attribute writes
while it serves, and a ``corral run`` subprocess (which no in-process mock can reach) talks to it
over HTTP like to any server. The routes live in ``ollama.py`` and ``openai.py``, the misbehaviour
in ``faults.py``; ``FakeServer`` (``fake_server.py``) puts them together.
"""

from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self

from aiohttp import web

from .wire import HOST, ApiKind, Body, Latency, Responder, ollama_full_name, ollama_key, prompts_of


class Gauge:
    """Requests in flight across several fakes, and the most at once: a test's proof that a client
    kept servers busy at the same time, without reading any clock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        with self._lock:
            self.now -= 1


class ServerCore:
    """Settings, counters, lifecycle (start/stop/kill/revive) and the loop thread; no routes.

    The constructor's arguments are documented on ``FakeServer``.
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
        #: A hostile server: fields set in every non-streamed generation answer, by dotted path
        #: (``{"eval_count": "many"}``, ``{"usage.completion_tokens": "x"}``); see ``_tampered``.
        self.answer_fields: dict[str, Any] = {}
        #: Ollama: the whole body /api/tags answers with, when set (``{"models": "x"}``...).
        self.tags_body: Any = None
        #: Headers added to every successful inference answer, or a callable giving them per answer
        #: (a hosted endpoint's ``x-ratelimit-remaining-requests`` ...).
        self.answer_headers: Mapping[str, str] | Callable[[], Mapping[str, str]] | None = None
        #: A gauge several fakes share (``Gauge()``): requests in flight across all of them, and its peak.
        self.gauge: Gauge | None = None

        self._port = port
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._fail_queue: deque[tuple[int, float | None]] = deque()
        self._ollama_names = {ollama_key(m): ollama_full_name(m) for m in self.models}

        # Statistics (guarded by _lock).
        self._requests: list[tuple[str, Body]] = []
        self._arrivals: list[float] = []   # time.monotonic() of each inference request's arrival
        self._in_flight = 0
        self._max_in_flight = 0
        self._queued = 0
        self._max_queued = 0
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
        return f"http://{HOST}:{self._port}"

    @property
    def alive(self) -> bool:
        """True while listening (started and not killed)."""
        return self._site is not None

    def start(self) -> Self:
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

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "alive" if self.alive else "stopped"
        return f"<{type(self).__name__} {self.api} {self.url} {state} models={list(self.models)}>"

    # ---------------------------------------------------------------- statistics

    @property
    def requests(self) -> list[tuple[str, Body]]:
        """(path, body) of every parsed inference request, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def arrivals(self) -> list[float]:
        """``time.monotonic()`` when each inference request arrived (for figures, not for tests)."""
        with self._lock:
            return list(self._arrivals)

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
    def max_queued(self) -> int:
        """The most requests that waited at once for a free slot (with ``slots``)."""
        with self._lock:
            return self._max_queued

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
            self._arrivals.clear()
            self._max_in_flight = self._in_flight
            self._max_queued = self._queued
            self._completed = 0
            self._dropped = 0
            self._status_counts.clear()
            self._path_counts.clear()

    def wait_until(self, predicate: Callable[[Self], bool], timeout: float = 5.0,
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

    def _make_app(self) -> web.Application:
        """The aiohttp application: its middleware and routes (the subclass knows them)."""
        raise NotImplementedError

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
            self._model_sems = {ollama_key(m): asyncio.Semaphore(n) for m, n in self.slots.items()}
        else:
            self._sem = asyncio.Semaphore(self.slots) if self.slots else None
        app = self._make_app()
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
            sock.bind((HOST, self._port))
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
