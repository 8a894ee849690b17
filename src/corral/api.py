"""The Python front: `batch_generate` and its async twin, for scripts and notebooks.

One async implementation; the sync function runs it on a private event loop, in a helper thread when
the caller already has a running loop (Jupyter), so notebooks need no nest_asyncio.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import orjson

from .errors import UsageError
from .limits import slots_problem
from .manifest import ManifestRecorder, data_facts
from .options import check_options, checked_keywords
from .requests import Request, build_messages, canonical_options
from .results import Outcome
from .runner import run_requests
from .runtime import run_sync
from .settings import LOCAL_PARALLEL, ConfigLike, DefaultInt, DefaultStr, ServerLike, Settings, resolve
from .store import Store


def prompt_request(item: str | dict[str, Any], model: str, system: str | None,
                   options: dict[str, Any], fmt: Any) -> Request:
    """A prompt (string) or a dict with prompt/messages (and optional model/id/options) as a Request."""
    if isinstance(item, str):
        return Request(index=0, id="", model=model, messages=build_messages(item, system),
                       options=options, format=fmt)
    if not isinstance(item, dict):
        raise UsageError(f"a prompt must be a string or a dict, not {type(item).__name__}")
    if "messages" in item:
        messages = build_messages(None, item.get("system", system), item["messages"])
    elif "prompt" in item:
        messages = build_messages(item["prompt"], item.get("system", system))
    else:
        raise UsageError("a prompt dict needs a 'prompt' or 'messages' key")
    return Request(
        index=0, id=str(item.get("id", "")), model=item.get("model", model), messages=messages,
        options=canonical_options({**options, **check_options(item.get("options"), "a prompt's options")}),
        format=item.get("format", fmt),
    )


OLLAMA_MANAGER_KEYS = ("prompt", "response", "model", "success", "error", "eval_count", "eval_duration")


def result_dict(outcome: Outcome) -> dict[str, Any]:
    """OllamaManager's ``batch_generate`` keys first, then corral's provenance fields."""
    row = {**outcome.summary(), "success": outcome.ok}
    ordered = {key: row[key] for key in OLLAMA_MANAGER_KEYS}
    ordered.update((key, value) for key, value in row.items() if key not in ordered and key != "id")
    return ordered


#: OllamaManager's defaults; a config's ``model`` and servers' own ``max_concurrency`` win over them.
DEFAULT_MODEL = DefaultStr("qwen3:8b")
DEFAULT_MAX_CONCURRENT = DefaultInt(5)


@checked_keywords()
async def batch_generate_async(
    prompts: Iterable[str | dict[str, Any]],
    model: str = DEFAULT_MODEL,
    max_concurrent: int | None = DEFAULT_MAX_CONCURRENT,
    rate_limit_delay: float = 0.1,
    *,
    servers: ServerLike | Sequence[ServerLike] | None = None,
    local: bool = False,
    system: str | None = None,
    format: Any = None,
    api: str = "ollama",
    config: ConfigLike | None = None,
    store: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
    max_attempts: int | None = None,
    hedge: bool | None = None,
    manifest: str | os.PathLike[str] | None = None,
    max_busy_seconds: float | None = None,
    progress: bool | str = True,
    keep_alive: str | int | None = None,
    options: dict[str, Any] | None = None,
    extra_options: dict[str, Any] | None = None,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """The async twin of `batch_generate`: await it inside your own event loop.

    ``progress``: True (a bar on a terminal, log lines elsewhere), False, or "bar" / "log" /
    "none", as `run_analysis` and `fill_missing_fields` take it."""
    if max_concurrent is not None and slots_problem(max_concurrent):
        raise UsageError(f"max_concurrent {slots_problem(max_concurrent)} (OllamaManager's order: "
                         "prompts, model, max_concurrent, rate_limit_delay; servers= is a keyword)")
    if isinstance(rate_limit_delay, bool) or not isinstance(rate_limit_delay, (int, float)) \
            or not 0 <= rate_limit_delay < float("inf"):
        raise UsageError(f"rate_limit_delay must be a number of seconds >= 0, not {rate_limit_delay!r}")
    with ExitStack() as stack:
        job = resolve(servers=servers, config=config, api=api, local=local, stack=stack,
                      local_parallel=max_concurrent or LOCAL_PARALLEL, workers=max_concurrent,
                      model=None if model is DEFAULT_MODEL else model, system=system,
                      options={**(options or {}), **generate_kwargs}, extra_options=extra_options,
                      format=format, keep_alive=keep_alive,
                      timeout=timeout, max_attempts=max_attempts, hedge=hedge,
                      max_busy_seconds=max_busy_seconds)
        return await _generate(prompts, job, job.model or str(model), rate_limit_delay, store, manifest,
                               progress)


async def _generate(prompts: Iterable[str | dict[str, Any]], job: Settings, model: str,
                    rate_limit_delay: float, store: str | os.PathLike[str] | None,
                    manifest: str | os.PathLike[str] | None, progress: bool | str = True
                    ) -> list[dict[str, Any]]:
    """The prompts as requests through the runner, collected in input order."""
    merged_options = canonical_options(job.options)
    requests = [prompt_request(p, model, job.system, merged_options, job.format) for p in prompts]
    for position, request in enumerate(requests):
        request.id = request.id or str(position)
        request.keep_alive = job.keep_alive
    settings = job.engine_settings(rate_limit_delay=rate_limit_delay)
    collected = _Collect()
    recorder = ManifestRecorder(
        kind="batch_generate", path=Path(manifest) if manifest is not None else None,
        input=data_facts("prompts", (_hashable(r.messages) for r in requests), len(requests)),
        job={"models": sorted({r.model for r in requests}), "model": model,
             "system": job.system, "options": merged_options, "format": job.format},
    )
    journal = Store(store)
    try:
        await run_requests(requests, servers=job.servers, store=journal, settings=settings, sinks=[collected],
                           models={r.model for r in requests}, total=len(requests),
                           progress=progress if isinstance(progress, str) else ("auto" if progress else "none"),
                           manifest=recorder)
    finally:
        journal.close()
    return collected.rows


def _hashable(messages: Any) -> bytes:
    """The messages as bytes to hash. A lone surrogate cannot be UTF-8: such a prompt is hashed in
    its escaped form here, and the engine fails its row (``invalid_request``) instead of raising."""
    try:
        return orjson.dumps(messages)
    except TypeError:
        return json.dumps(messages, ensure_ascii=True, default=str).encode()


class _Collect:
    """A sink that keeps every result as a dict, in input order."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, outcome: Outcome) -> None:
        self.rows.append(result_dict(outcome))

    def close(self, complete: bool = True) -> None:
        del complete


@checked_keywords(batch_generate_async)
def batch_generate(
    prompts: Iterable[str | dict[str, Any]],
    model: str = DEFAULT_MODEL,
    max_concurrent: int | None = DEFAULT_MAX_CONCURRENT,
    rate_limit_delay: float = 0.1,
    **generate_kwargs: Any,
) -> list[dict[str, Any]]:
    """Run prompts over one or many servers; one result dict per prompt, in input order.

    OllamaManager's call, with its order and defaults: ``batch_generate(prompts, "mistral", 5, 0.1)``.
    ``max_concurrent`` is the number of requests in flight at once on a server, never exceeded
    (left at its default, a server's own ``max_concurrency`` in the config wins; None: each
    server's own slots, learnt: twice what llama.cpp reports, else 8 for Ollama, 16 for other
    OpenAI-compatible servers). ``rate_limit_delay``: as in OllamaManager, each slot waits
    that many seconds before every request but the first (0: none). The model is ``model``, else the
    config's, else ``"qwen3:8b"``. Failures are reported in the result (``success=False``,
    ``error``), never raised, so a long batch is never lost to one bad row.

    Other keyword arguments are model options by Ollama's names (``temperature=0, seed=1,
    num_ctx=4096, num_predict=64``...; a misspelt one is an error with a did-you-mean;
    ``extra_options={...}`` sends options corral does not know) or corral's own, keyword-only:
    ``servers`` (URLs, or ``"local"``), ``local=True`` (the embedded llama.cpp model), ``system``,
    ``format``, ``keep_alive``, ``options={...}`` (as Ollama's client takes them), ``api``,
    ``config``, ``store`` (a journal: resume across calls), ``timeout``
    (seconds per attempt, by default derived from each prompt's expected tokens and the server's
    observed speed), ``hedge=False`` (never re-send a straggler to an idle faster server at the
    end), ``manifest`` (a path for the run's manifest JSON; it is kept in the store either way),
    ``max_busy_seconds`` (how long a row may wait on "server busy" answers, default 300),
    ``progress=False`` (no progress bar or log lines).
    Works the same in a plain script and inside Jupyter's running event loop.
    """
    return run_sync(batch_generate_async(prompts, model, max_concurrent, rate_limit_delay,
                                         **generate_kwargs))
