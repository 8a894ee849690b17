"""``FakeServer``: a faithful fake LLM server (Ollama or OpenAI-compatible) for corral's tests and
benchmarks, put together from the core machinery, the faults and both protocols' routes.

Why a fake: corral's scheduling, failover, retry, resume and crash tests need servers that answer in
milliseconds, deterministically, and that can be made to misbehave on demand (fail, hang, drop the
connection, die and come back on the same port). Real Ollama / vLLM / llama.cpp cannot do that, and
mocks inside the client process cannot be reached by a ``corral run`` subprocess.

Wire formats follow the real servers (checked against ollama/ollama ``server/routes.go`` and
``docs/api.md``, OpenAI's chat-completion / completion / embedding / model objects, vLLM's error
bodies, llama.cpp's ``/health`` and ``/props``), so a client that works here should work there.
"""

from __future__ import annotations

from aiohttp import web

from .ollama import OllamaApi
from .openai import OpenAIApi

__all__ = ["FakeServer"]


class FakeServer(OllamaApi, OpenAIApi):
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


    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024 * 1024)
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
        return app
