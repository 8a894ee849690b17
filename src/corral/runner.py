"""The one job lifecycle every front goes through: open the fleet, record the run, run, finish.

Prompt files, DataFrames, table files, `fill`, embeddings, `bench` sweeps and Ray actors all differ
only in what they send and where the answers go. Everything around that is here, once: probing the
servers (by opening an `Engine`), checking the models, starting the run in the store, the manifest,
the GPU sampler, the progress display, and the run's status when it ends — complete, interrupted or
failed. A front passes ``work``, the part that differs; `run_requests` is the common case of a
stream of requests whose outcomes go to sinks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import ServerSpec
from .engine import Engine, EngineSettings, JobStats, Validator
from .gpu import GpuSampler
from .manifest import ManifestRecorder, redact_argv
from .progress import Counter, ProgressDisplay
from .requests import Request
from .results import Outcome
from .store import Store


class Sink(Protocol):
    """Where outcomes go, in input order; ``close(complete=False)`` when the job did not finish."""

    def write(self, outcome: Outcome) -> None: ...
    def close(self, complete: bool = True) -> None: ...


@dataclass(slots=True)
class JobResult:
    stats: JobStats
    failures: list[Outcome] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    engine: Engine | None = None


@dataclass(slots=True)
class RunRecord:
    """What the store's run row says about this job besides the servers (``{"job": "embed"}``...).
    ``counts`` replaces the engine's counters at the end, for jobs that count something else."""

    info: dict[str, Any] = field(default_factory=dict)
    counts: Callable[[], dict[str, Any]] | None = None


async def run_job(
    work: Callable[[Engine], Awaitable[Any]], *, servers: list[ServerSpec] | None = None,
    store: Store, settings: EngineSettings | None = None, models: Iterable[str] = (),
    engine: Engine | None = None, progress: str = "none", counter: Counter | None = None,
    argv: Sequence[str] | None = None, manifest: ManifestRecorder | None = None,
    gpu_monitor: bool | float = True, record: RunRecord | None = None, track: bool = True,
    checked_answers: bool = False,
) -> Engine:
    """Open an engine on ``servers`` (or use the open ``engine`` a Ray actor keeps), check that every
    one of ``models`` is on a live server, and run ``work(engine)`` inside the run's lifecycle.

    ``gpu_monitor``: False samples no GPU, True samples nvidia-smi when it is on PATH, a number is the
    sampling interval. The manifest is saved even when the run is interrupted, its status saying so.
    ``track=False`` opens no run record of its own, for work inside a run that has one (a `bench`
    sweep's levels, `run --auto-tune`'s probes).
    Returns the engine (closed unless it was given), whose ``stats`` and ``servers`` stay readable."""
    if engine is not None:
        await _lifecycle(engine, work, store, settings or engine.settings, list(models), progress,
                         counter, argv, manifest, gpu_monitor, record, track, checked_answers)
        return engine
    assert servers is not None, "run_job needs servers or an open engine"
    async with Engine(servers, store, settings) as opened:
        await _lifecycle(opened, work, store, opened.settings, list(models), progress, counter, argv,
                         manifest, gpu_monitor, record, track, checked_answers)
    return opened


async def _lifecycle(engine: Engine, work: Callable[[Engine], Awaitable[Any]], store: Store,
                     settings: EngineSettings, models: list[str], progress: str,
                     counter: Counter | None, argv: Sequence[str] | None,
                     manifest: ManifestRecorder | None, gpu_monitor: bool | float,
                     record: RunRecord | None, track: bool, checked_answers: bool) -> None:
    engine.check_models(models)
    record = record or RunRecord()
    if track:
        store.start_run(redact_argv(argv) if argv else None,
                        {**record.info, "servers": [s.label for s in engine.servers],
                         "unreachable": engine.unreachable})
    if manifest is not None:
        await manifest.begin(engine, store, settings, models, checked_answers=checked_answers)
    interval = None if gpu_monitor is True else 0 if gpu_monitor is False else float(gpu_monitor)
    sampler = GpuSampler(store, interval)
    status = "failed"
    try:
        async with sampler, ProgressDisplay(engine, progress, counter=counter):
            await work(engine)
        status = "complete"
    except (asyncio.CancelledError, KeyboardInterrupt):
        status = "interrupted"
        raise
    finally:
        if track:
            counts = record.counts() if record.counts is not None else engine.stats.as_dict()
            store.finish_run({**record.info, **counts} if record.counts is not None else counts)
        if manifest is not None:
            manifest.end(engine, status, sampler.described())


async def run_requests(
    requests: Iterable[Request], *, servers: list[ServerSpec] | None = None, store: Store,
    settings: EngineSettings | None = None, sinks: Sequence[Sink], models: Iterable[str],
    total: int | None = None, engine: Engine | None = None, validate: Validator | None = None,
    window: int | None = None, ready: Callable[[], bool] | None = None, progress: str = "auto",
    keep_failures: int = 1000,
    argv: Sequence[str] | None = None, manifest: ManifestRecorder | None = None,
    gpu_monitor: bool | float = True, track: bool = True,
) -> JobResult:
    """Run ``requests`` and write every outcome to every sink, in input order.

    The sinks are closed whatever happens, complete only when the run finished (also when no server
    answered: no stray half-written output)."""
    failures: list[Outcome] = []

    def on_outcome(outcome: Outcome) -> None:
        for sink in sinks:
            sink.write(outcome)
        if not outcome.ok and len(failures) < keep_failures:
            failures.append(outcome)

    async def work(open_engine: Engine) -> None:
        await open_engine.run(requests, on_outcome, total=total, validate=validate, window=window,
                              ready=ready)

    complete = False
    try:
        used = await run_job(work, servers=servers, store=store, settings=settings, models=models,
                             engine=engine, progress=progress, argv=argv, manifest=manifest,
                             gpu_monitor=gpu_monitor, track=track,
                             checked_answers=validate is not None)
        complete = True
    finally:
        for sink in sinks:
            sink.close(complete=complete)
    return JobResult(stats=used.stats, failures=failures, unreachable=used.unreachable, engine=used)
