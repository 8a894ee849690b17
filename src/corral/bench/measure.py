"""Per model and per server: latency, time to first token, generation and prompt speed, cold load.

Each run is one streamed request, sent one after another (never two at once on a server), so the
figures describe the model, not a queue: concurrency is what `sweep` measures. Servers are measured
side by side (they are separate machines); the models of one server one after another, because two
models sharing a GPU would measure each other.

Where a figure comes from, per wire format:

* tokens/s: Ollama's ``eval_count / eval_duration``; llama.cpp's ``timings`` give the same pair; other
  OpenAI-compatible servers only have ``usage.completion_tokens``, divided by the time from the first
  to the last token of the stream (wall time, as seen by the client).
* prompt tokens/s: ``prompt_eval_count / prompt_eval_duration`` where the server reports them, else
  None (nothing is guessed).
* load time: Ollama's ``load_duration`` of the first request when it was cold (the model was not in
  memory: more than ``COLD_LOAD_SECONDS``); OpenAI-compatible servers load before they serve and
  report nothing, so None.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..backends import Backend, BackendError, Streamed, make_backend
from ..config import ServerSpec
from ..engine.servers import ServerState, probe_one, resolve_model
from ..http import HttpClient, default_client
from ..requests import Request, build_messages, canonical_options
from .stats import mean, quantile, rounded

COLD_LOAD_SECONDS = 0.25  # a warm Ollama model reports a few ms of load_duration
RETRIES = 1               # a run failing on a retryable error (connection, 503) is tried once more


@dataclass(slots=True)
class RunFigures:
    """One streamed request."""

    seconds: float
    first_token: float | None
    prompt_tokens: int | None
    tokens: int | None
    tokens_per_sec: float | None
    prompt_tokens_per_sec: float | None
    load_seconds: float | None
    response: str


@dataclass
class ModelFigures:
    """Everything measured for one model on one server; OllamaManager's keys come from `seed_dict`."""

    server: str
    model: str
    prompt: str
    num_runs: int
    runs: list[RunFigures] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    api: str = "ollama"

    @property
    def ok(self) -> int:
        return len(self.runs)

    @property
    def latencies(self) -> list[float]:
        return [r.seconds for r in self.runs]

    @property
    def cold_load(self) -> float | None:
        """The first request's load time when the model had to be loaded for it."""
        if not self.runs or self.runs[0].load_seconds is None:
            return None
        first = self.runs[0].load_seconds
        return first if first >= COLD_LOAD_SECONDS else None

    def figures(self) -> dict[str, Any]:
        """All figures, flat, in seconds and tokens per second."""
        lat = self.latencies
        ttft = [r.first_token for r in self.runs if r.first_token is not None]
        tps = [r.tokens_per_sec for r in self.runs if r.tokens_per_sec is not None]
        ptps = [r.prompt_tokens_per_sec for r in self.runs if r.prompt_tokens_per_sec is not None]
        loads = [r.load_seconds for r in self.runs if r.load_seconds is not None]
        return {
            "server": self.server, "model": self.model, "api": self.api, "num_runs": self.num_runs,
            "ok": self.ok, "errors": len(self.errors),
            "latency": rounded(mean(lat)), "latency_p50": rounded(quantile(lat, 0.5)),
            "latency_p95": rounded(quantile(lat, 0.95)),
            "ttft": rounded(mean(ttft)), "ttft_p50": rounded(quantile(ttft, 0.5)),
            "tokens_per_sec": rounded(mean(tps), 2),
            "prompt_tokens_per_sec": rounded(mean(ptps), 2),
            "tokens": sum(r.tokens or 0 for r in self.runs),
            "load_time": rounded(self.cold_load),
            "cold_start": self.cold_load is not None,
            "load_time_reported": bool(loads),
            "error": self.errors[0] if self.errors else None,
        }

    def seed_dict(self) -> dict[str, Any]:
        """OllamaManager's result (``model``, ``latency``, ``tokens_per_sec``, ``prompt``, ``response``,
        ``num_runs``, ``error``) first, then the other figures."""
        figures = self.figures()
        seed = {
            "model": self.model, "latency": figures["latency"],
            "tokens_per_sec": figures["tokens_per_sec"], "prompt": self.prompt,
            "response": self.runs[0].response if self.runs else None, "num_runs": self.num_runs,
            "error": figures["error"] if not self.runs else None,
        }
        seed.update((k, v) for k, v in figures.items() if k not in seed)
        seed["latencies"] = [round(x, 4) for x in self.latencies]
        return seed


def run_figures(streamed: Streamed, api: str) -> RunFigures:
    reply = streamed.reply
    tokens = reply.eval_count
    if tokens and reply.eval_duration:
        tps: float | None = tokens / (reply.eval_duration / 1e9)
    elif tokens and streamed.first_token is not None and streamed.seconds > streamed.first_token:
        # No server-side timing (vLLM...): the stream's own span, first token to last.
        tps = max(tokens - 1, 1) / (streamed.seconds - streamed.first_token)
    else:
        tps = None
    ptps = (reply.prompt_eval_count / (reply.prompt_eval_duration / 1e9)
            if reply.prompt_eval_count and reply.prompt_eval_duration else None)
    load = reply.load_duration / 1e9 if api == "ollama" and reply.load_duration is not None else None
    return RunFigures(seconds=streamed.seconds, first_token=streamed.first_token,
                      prompt_tokens=reply.prompt_eval_count, tokens=tokens, tokens_per_sec=tps,
                      prompt_tokens_per_sec=ptps, load_seconds=load, response=reply.text or "")


def bench_request(model: str, prompt: str, options: dict[str, Any], system: str | None = None,
                  index: int = 0) -> Request:
    return Request(index=index, id=str(index), model=model, messages=build_messages(prompt, system),
                   options=canonical_options(options))


async def measure_server(backend: Backend, models: list[tuple[str, str]], prompt: str, num_runs: int,
                         options: dict[str, Any], timeout: float, system: str | None = None,
                         ) -> list[ModelFigures]:
    """Every (asked name, server's name) model this server has, ``num_runs`` streamed requests each,
    one at a time."""
    out: list[ModelFigures] = []
    for model, served_as in models:
        figures = ModelFigures(server=backend.spec.label, model=model, prompt=prompt,
                               num_runs=num_runs, api=backend.spec.api)
        request = bench_request(served_as, prompt, options, system)
        for _ in range(num_runs):
            for attempt in range(RETRIES + 1):
                try:
                    streamed = await backend.stream(request, timeout)
                except BackendError as exc:
                    if exc.retryable and attempt < RETRIES:
                        continue  # e.g. a keep-alive connection the server had just closed
                    figures.errors.append(str(exc))
                    break
                figures.runs.append(run_figures(streamed, backend.spec.api))
                break
        out.append(figures)
    return out


async def measure(specs: list[ServerSpec], models: list[str], prompt: str, num_runs: int = 3,
                  options: dict[str, Any] | None = None, *, timeout: float = 300.0,
                  system: str | None = None, probe_timeout: float = 5.0,
                  http: HttpClient | None = None) -> tuple[list[ModelFigures], list[str]]:
    """Per server and model figures, and the problems found (unreachable servers, models nowhere).

    A model no server has gets one entry with its error, so a typo is reported in the results
    (OllamaManager's ``error``) instead of stopping the other models. ``http``: the client to send
    through (None: corral's default one, closed at the end)."""
    options = dict(options or {})
    problems: list[str] = []
    client = http or default_client()
    try:
        backends = [make_backend(spec, client) for spec in specs]
        infos = await asyncio.gather(*(probe_one(b, probe_timeout) for b in backends))
        plans: list[tuple[Backend, list[tuple[str, str]]]] = []
        found: set[str] = set()
        for backend, info in zip(backends, infos):
            if isinstance(info, BackendError):
                problems.append(f"{backend.spec.label}: unreachable ({info})")
                continue
            state = ServerState(spec=backend.spec, backend=backend, info=info, slots=1)
            have = [(m, resolve_model(state, m)) for m in models]
            names = [(m, name) for m, name in have if name is not None]
            found.update(m for m, name in have if name is not None)
            if names:
                plans.append((backend, names))
        results = await asyncio.gather(*(measure_server(b, names, prompt, num_runs, options, timeout,
                                                        system) for b, names in plans))
    finally:
        if http is None:
            await client.aclose()
    figures = [f for per_server in results for f in per_server]
    for model in models:
        if model not in found:
            missing = ModelFigures(server="-", model=model, prompt=prompt, num_runs=num_runs)
            missing.errors.append(f"model {model!r} is on no reachable server")
            figures.append(missing)
            problems.append(f"model {model!r} is on no reachable server")
    return figures, problems


def pooled(figures: list[ModelFigures], model: str) -> ModelFigures:
    """One model's runs over every server, as OllamaManager has one result per model."""
    mine = [f for f in figures if f.model == model]
    merged = ModelFigures(server=",".join(f.server for f in mine), model=model,
                          prompt=mine[0].prompt if mine else "", num_runs=mine[0].num_runs if mine else 0,
                          api=mine[0].api if mine else "ollama")
    for f in mine:
        merged.runs.extend(f.runs)
        merged.errors.extend(f.errors)
    return merged


def as_dicts(figures: list[ModelFigures]) -> list[dict[str, Any]]:
    return [f.figures() for f in figures]


