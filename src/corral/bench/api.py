"""`corral bench` and `batch_benchmark`: one async implementation, thin sync wrappers.

A bench is: per server and model, streamed runs one at a time (`measure`); optionally a concurrency
sweep per server (`sweep`); GPU samples from ``nvidia-smi`` throughout, into the store like a run's.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from ..config import ServerSpec
from ..errors import UsageError
from ..gpu import GpuSampler, gpu_series, gpu_summary
from ..options import checked_keywords
from ..requests import Request
from ..runtime import run_sync
from ..settings import ConfigLike, ServerLike, check_seconds, check_slots, resolve
from ..store import Store
from .measure import ModelFigures, bench_request, measure, pooled
from .sweep import DEFAULT_TOLERANCE, Level, Sweep, sweep_fleet

DEFAULT_PROMPT = "Hello, how are you?"   # OllamaManager's default
DEFAULT_SWEEP_TOKENS = 64                # each sweep request's num_predict unless options set one
BENCH_GPU_INTERVAL = 1.0                 # a bench is short: sample every second unless told otherwise


@dataclass
class BenchResult:
    models: list[ModelFigures] = field(default_factory=list)
    sweeps: list[Sweep] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    gpu: dict[tuple[int, str], list[tuple[float, float | None, float | None]]] = field(default_factory=dict)
    gpu_summary: list[dict[str, Any]] = field(default_factory=list)
    gpu_note: str | None = None
    prompt: str = ""
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        """Every figure, as plain data (the JSON output)."""
        return {
            "prompt": self.prompt, "seconds": round(self.seconds, 3),
            "models": [m.seed_dict() for m in self.models],
            "sweeps": [s.figures() for s in self.sweeps],
            "gpu": self.gpu_summary, "gpu_note": self.gpu_note,
            "gpu_samples": [{"gpu": g, "name": n, "t": t, "utilization": u, "memory_used": m}
                            for (g, n), points in sorted(self.gpu.items()) for t, u, m in points],
            "problems": self.problems,
        }


async def bench_async(
    specs: list[ServerSpec], models: Sequence[str], prompt: str = DEFAULT_PROMPT, num_runs: int = 3, *,
    options: dict[str, Any] | None = None, system: str | None = None, sweep: Sequence[int] = (),
    sweep_model: str | None = None, waves: int = 3, sweep_minimum: int = 8,
    tolerance: float = DEFAULT_TOLERANCE, timeout: float = 300.0, store: Store | None = None,
    gpu_monitor: bool = True, gpu_interval: float | None = None,
    on_level: Callable[[Sweep, Level], None] | None = None,
) -> BenchResult:
    """Measure every model on every server that has it, then sweep each server's concurrency."""
    if not models:
        raise UsageError("nothing to benchmark: give at least one model")
    if num_runs < 1:
        raise UsageError("num_runs must be at least 1")
    if any(level < 1 for level in sweep):
        raise UsageError("sweep levels must be positive integers, e.g. 1,2,4,8,16")
    for level in sweep:
        check_slots(level, "a sweep level")
    check_seconds(timeout, "timeout")
    options = dict(options or {})
    own_store = store is None
    store = store if store is not None else Store(None)
    result = BenchResult(prompt=prompt)
    interval = gpu_interval if gpu_interval is not None else float(
        os.environ.get("CORRAL_GPU_INTERVAL", BENCH_GPU_INTERVAL))
    if gpu_monitor and not shutil.which("nvidia-smi"):
        result.gpu_note = "no nvidia-smi on PATH; GPU monitoring off"
    run_id = store.start_run(["bench"], {"servers": [s.label for s in specs], "models": list(models)})
    started = time.perf_counter()
    try:
        async with GpuSampler(store, interval if gpu_monitor else 0):
            result.models, result.problems = await measure(
                specs, list(models), prompt, num_runs, options, timeout=timeout, system=system)
            if sweep:
                model = sweep_model or models[0]
                servers = {f.server for f in result.models if f.model == model and f.ok}
                sweep_options = {"num_predict": DEFAULT_SWEEP_TOKENS, **options}

                def make(i: int) -> Request:
                    return bench_request(model, prompt, sweep_options, system, index=i)

                # In parallel, but servers that may share a GPU one after another (sweep_fleet).
                result.sweeps.extend(await sweep_fleet(
                    [spec for spec in specs if spec.label in servers], model, make, sorted(set(sweep)),
                    waves=waves, minimum=sweep_minimum, tolerance=tolerance, timeout=timeout, store=store,
                    on_level=on_level))
    finally:
        result.seconds = time.perf_counter() - started
        store.finish_run({"models": len(result.models), "sweeps": len(result.sweeps)})
        result.gpu = gpu_series(store, run_id)
        result.gpu_summary = gpu_summary(store, run_id)
        if own_store:
            store.close()
    return result


@checked_keywords()
async def batch_benchmark_async(
    models: list[str], prompt: str = DEFAULT_PROMPT, num_runs: int = 3, *,
    servers: ServerLike | Sequence[ServerLike] | None = None, local: bool = False,
    config: ConfigLike | None = None, api: str = "ollama", system: str | None = None,
    timeout: float = 300.0, extra_options: dict[str, Any] | None = None, **options: Any,
) -> dict[str, dict[str, Any]]:
    """The async twin of `batch_benchmark`."""
    with ExitStack() as stack:
        job = resolve(servers=servers, config=config, api=api, local=local, stack=stack, system=system,
                      options=options, extra_options=extra_options)
        names = [job.local_model] if job.local_model else list(models)
        result = await bench_async(job.servers, names, prompt, num_runs, options=job.options,
                                   system=job.system, timeout=timeout, gpu_monitor=False)
    return {model: pooled(result.models, model).seed_dict() for model in dict.fromkeys(names)}


@checked_keywords(batch_benchmark_async)
def batch_benchmark(
    models: list[str], prompt: str = DEFAULT_PROMPT, num_runs: int = 3, **kwargs: Any,
) -> dict[str, dict[str, Any]]:
    """Benchmark models with the same prompt: OllamaManager's ``batch_benchmark``.

    Returns, as the seed does, a dict from model name to its result with the seed's keys:
    ``model``, ``latency`` (mean seconds per request), ``tokens_per_sec`` (mean generation speed),
    ``prompt``, ``response`` (the first answer), ``num_runs``, ``error`` (None unless every run
    failed), then corral's other figures: ``latency_p50``/``latency_p95``, ``ttft`` (time to first
    token, streamed), ``prompt_tokens_per_sec``, ``load_time`` (seconds to load a cold Ollama model;
    None when warm or on OpenAI-compatible servers, which report none), ``ok``, ``errors``,
    ``server`` and ``latencies``. A model on several servers is measured on each, pooled here
    (``corral bench`` shows them per server). Keyword arguments: ``servers`` (URLs, or ``"local"``),
    ``local=True`` (the embedded llama.cpp model, benchmarked under its own name in place of
    ``models``), ``config``, ``api``, ``system``, ``timeout``, and model options (``temperature=0``,
    ``num_predict=128``...; a misspelt one is an error with a did-you-mean, ``extra_options={...}``
    sends options corral does not know).
    Works in scripts and inside Jupyter's running loop; ``await batch_benchmark_async(...)`` too.
    """
    return run_sync(batch_benchmark_async(models, prompt, num_runs, **kwargs))
