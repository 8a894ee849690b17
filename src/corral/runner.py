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
import gc
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from .config import ServerSpec
from .engine import Engine, EngineSettings, JobStats, Validator
from .engine.run import Total
from .gpu import GpuSampler
from .manifest import ManifestRecorder, redact_argv
from .progress import Counter, ProgressDisplay
from .reload import ConfigFile, ConfigReload
from .requests import GROUP_SEP, Request
from .results import Outcome
from .status import StatusPublisher
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
    checked_answers: bool = False, unserved: list[str] | None = None, reload: ConfigFile | None = None,
) -> Engine:
    """Open an engine on ``servers`` (or use the open ``engine`` a Ray actor keeps), check that every
    one of ``models`` is on a live server, and run ``work(engine)`` inside the run's lifecycle.

    ``gpu_monitor``: False samples no GPU, True samples nvidia-smi when it is on PATH, a number is the
    sampling interval. The manifest is saved even when the run is interrupted, its status saying so.
    ``track=False`` opens no run record of its own, for work inside a run that has one (a `bench`
    sweep's levels, `run --auto-tune`'s probes). ``unserved``: a list to receive the models no live
    server has, instead of refusing the job for them (their rows are then the caller's to answer).
    ``reload``: the config file the servers came from; SIGHUP re-reads it and applies its servers to
    the running job.
    Returns the engine (closed unless it was given), whose ``stats`` and ``servers`` stay readable."""
    job = _Lifecycle(store=store, models=list(models), progress=progress, counter=counter, argv=argv,
                     manifest=manifest, gpu_monitor=gpu_monitor, record=record or RunRecord(),
                     track=track, checked_answers=checked_answers, unserved=unserved, reload=reload)
    with _fewer_collections():
        if engine is not None:
            await job.run(engine, settings or engine.settings, work)
            return engine
        assert servers is not None, "run_job needs servers or an open engine"
        async with Engine(servers, store, settings) as opened:
            await job.run(opened, opened.settings, work)
        return opened


#: Young-generation collections during a job: every 20,000 net allocations instead of 700.
JOB_GC_THRESHOLD = (20_000, 20, 20)
_jobs_running = 0


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """A job allocates a few objects per row and keeps a window of rows alive; with CPython's
    default thresholds (700, 10, 10) the collector rescans those live rows over and over, a quarter
    of the CPU of a 100,000-row re-run (benchmarks/resume.py). During a job young objects are
    collected less often; cycles are still collected. Restored when the last job running ends."""
    global _jobs_running
    first = _jobs_running == 0
    if first:
        saved = gc.get_threshold()
        gc.set_threshold(*JOB_GC_THRESHOLD)
    _jobs_running += 1
    try:
        yield
    finally:
        _jobs_running -= 1
        if first:
            gc.set_threshold(*saved)


@dataclass(slots=True)
class _Lifecycle:
    """What `run_job` does around the work, as its keyword arguments said (see there)."""

    store: Store
    models: list[str]
    progress: str
    counter: Counter | None
    argv: Sequence[str] | None
    manifest: ManifestRecorder | None
    gpu_monitor: bool | float
    record: RunRecord
    track: bool
    checked_answers: bool
    unserved: list[str] | None
    reload: ConfigFile | None

    async def run(self, engine: Engine, settings: EngineSettings,
                  work: Callable[[Engine], Awaitable[Any]]) -> None:
        store, manifest, record, models = self.store, self.manifest, self.record, self.models
        if self.unserved is not None:
            self.unserved.extend(missing_models(engine, models))
            models = [m for m in models if m not in self.unserved]
        engine.check_models(models)
        if self.track:
            store.start_run(redact_argv(self.argv) if self.argv else None,
                            {**record.info, "servers": [s.label for s in engine.servers],
                             "unreachable": engine.unreachable})
        if manifest is not None:
            await manifest.begin(engine, store, settings, models, checked_answers=self.checked_answers)
        gpu = self.gpu_monitor
        sampler = GpuSampler(store, None if gpu is True else 0 if gpu is False else float(gpu))
        # Live figures for `corral status` in another shell; only for a run with its own record.
        publisher = StatusPublisher(engine, store, self.counter, manifest) if self.track else None
        status = "failed"
        try:
            async with ConfigReload(engine, self.reload), sampler, \
                    ProgressDisplay(engine, self.progress, counter=self.counter):
                if publisher is not None:
                    async with publisher:
                        await work(engine)
                else:
                    await work(engine)
            status = "complete"
        except (asyncio.CancelledError, KeyboardInterrupt):
            status = "interrupted"
            raise
        finally:
            if publisher is not None:
                publisher.finish(status)
            if self.track:
                counts = record.counts() if record.counts is not None else engine.stats.as_dict()
                store.finish_run({**record.info, **counts} if record.counts is not None else counts)
            if manifest is not None:
                manifest.end(engine, status, sampler.described())


async def run_requests(
    requests: Iterable[Request], *, servers: list[ServerSpec] | None = None, store: Store,
    settings: EngineSettings | None = None, sinks: Sequence[Sink], models: Iterable[str],
    total: Total = None, engine: Engine | None = None, validate: Validator | None = None,
    window: int | None = None, ready: Callable[[], bool] | None = None, progress: str = "auto",
    keep_failures: int = 1000,
    argv: Sequence[str] | None = None, manifest: ManifestRecorder | None = None,
    gpu_monitor: bool | float = True, track: bool = True, fail_unserved: bool = False,
    reload: ConfigFile | None = None,
) -> JobResult:
    """Run ``requests`` and write every outcome to every sink, in input order.

    ``fail_unserved``: a row whose model no live server has gets an error outcome in its place and
    the other rows run (vLLM run-batch's way with OpenAI Batch files); by default such a model
    refuses the whole job before anything is sent. The sinks are closed whatever happens, complete
    only when the run finished (also when no server answered: no stray half-written output)."""
    failures: list[Outcome] = []
    unserved: list[str] | None = [] if fail_unserved else None

    def write(outcome: Outcome) -> None:
        for sink in sinks:
            sink.write(outcome)
        if not outcome.ok and len(failures) < keep_failures:
            failures.append(outcome)

    async def work(open_engine: Engine) -> None:
        if not unserved:
            await open_engine.run(requests, write, total=total, validate=validate, window=window,
                                  ready=ready)
            return
        split = _UnservedRows(requests, set(unserved), write, open_engine)
        await open_engine.run(split.served(), split.on_outcome, total=total, validate=validate,
                              window=window, ready=ready)
        split.drain()

    complete = False
    try:
        used = await run_job(work, servers=servers, store=store, settings=settings, models=models,
                             engine=engine, progress=progress, argv=argv, manifest=manifest,
                             gpu_monitor=gpu_monitor, track=track,
                             checked_answers=validate is not None, unserved=unserved, reload=reload)
        complete = True
    finally:
        for sink in sinks:
            sink.close(complete=complete)
    return JobResult(stats=used.stats, failures=failures, unreachable=used.unreachable, engine=used)


def missing_models(engine: Engine, models: Iterable[str]) -> list[str]:
    """The models (or split-mode groups) of ``models`` that some name of is on no live server."""
    return [m for m in dict.fromkeys(models)
            if any(not any(engine.serves(s, name) for s in engine.servers) for name in m.split(GROUP_SEP))]


class _UnservedRows:
    """Rows of a model no server has, answered with an error in their input place; the others go
    to the engine. The engine numbers the rows it is given, so each of its outcomes gets its input
    position back before the sinks see it (file names and Batch ids follow the input)."""

    def __init__(self, requests: Iterable[Request], missing: set[str], write: Callable[[Outcome], None],
                 engine: Engine) -> None:
        self.requests = requests
        self.missing = missing
        self.write = write
        self.engine = engine
        self.refused: deque[Outcome] = deque()   # input order, waiting for their turn
        self.positions: deque[int] = deque()     # input position of each row sent to the engine

    def served(self) -> Iterator[Request]:
        for position, request in enumerate(self.requests):
            if request.model in self.missing:
                request.index = position
                self.refused.append(Outcome(
                    request=request, error=f"model {request.model!r} is not on any live server",
                    error_kind="no_model", status_code=404))
                continue
            self.positions.append(position)
            yield request

    def on_outcome(self, outcome: Outcome) -> None:
        position = self.positions.popleft()
        self._refused_before(position)
        outcome.request.index = position
        self.write(outcome)

    def drain(self) -> None:
        """After the engine's last row: the refused rows that come after it."""
        self._refused_before(None)

    def _refused_before(self, position: int | None) -> None:
        stats = self.engine.stats
        while self.refused and (position is None or self.refused[0].request.index < position):
            stats.done += 1
            stats.failed += 1
            self.write(self.refused.popleft())
