"""Build and run a job from a prompt file: source -> engine -> sinks, with the store alongside.

The CLI is a thin layer over this; the Python API builds its requests in memory and calls the same
engine. Nothing here speaks HTTP or parses a wire format.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .config import ServerSpec
from .engine import Engine, EngineSettings, JobStats
from .errors import UsageError
from .gpu import GpuSampler
from .manifest import ManifestRecorder, redact_argv
from .progress import ProgressDisplay
from .requests import Request
from .results import Outcome
from .sources import PromptFile, ScanReport
from .store import Store

log = logging.getLogger("corral")


class Sink(Protocol):
    def write(self, outcome: Outcome) -> None: ...
    def close(self, complete: bool = True) -> None: ...


@dataclass(slots=True)
class JobResult:
    stats: JobStats
    failures: list[Outcome] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)
    engine: Engine | None = None


def default_store_path(output: str | None, output_dir: str | None) -> Path | None:
    """The store lives beside the output, so re-running the same command finds it."""
    if output:
        return Path(output).with_name(Path(output).name + ".corral.db")
    if output_dir:
        return Path(output_dir) / ".corral.db"
    return None


async def run_requests(
    requests: Iterable[Request], *, servers: list[ServerSpec], store: Store,
    settings: EngineSettings, sinks: list[Sink], models: Iterable[str], total: int | None = None,
    progress: str = "auto", keep_failures: int = 1000, argv: list[str] | None = None,
    manifest: ManifestRecorder | None = None, gpu_monitor: bool = True,
) -> JobResult:
    """Probe, check models, run, and write every outcome to every sink in input order.

    ``gpu_monitor=False`` samples no GPU (else nvidia-smi is sampled when it is on PATH). With a ``manifest``, the run's provenance (servers, digests, counts) is recorded as it happens;
    it is saved even when the run is interrupted, with its status saying so."""
    failures: list[Outcome] = []
    models = list(models)

    def on_outcome(outcome: Outcome) -> None:
        for sink in sinks:
            sink.write(outcome)
        if not outcome.ok and len(failures) < keep_failures:
            failures.append(outcome)

    complete = False
    try:
        async with Engine(servers, store, settings) as engine:
            engine.check_models(models)
            store.start_run(redact_argv(argv) if argv else None,
                            {"servers": [s.label for s in engine.servers],
                             "unreachable": engine.unreachable})
            if manifest is not None:
                await manifest.begin(engine, store, settings, models)
            status = "failed"
            sampler = GpuSampler(store, None if gpu_monitor else 0)
            try:
                async with sampler, ProgressDisplay(engine, progress):
                    stats = await engine.run(requests, on_outcome, total=total)
                complete = True
                status = "complete"
            except (asyncio.CancelledError, KeyboardInterrupt):
                status = "interrupted"
                raise
            finally:
                store.finish_run(engine.stats.as_dict())
                if manifest is not None:
                    manifest.end(engine, status, sampler.described())
    finally:
        for sink in sinks:  # also when no server answered: no stray half-written output
            sink.close(complete=complete)
    return JobResult(stats=stats, failures=failures, unreachable=engine.unreachable, engine=engine)


async def run_prompt_file(
    source: PromptFile, *, servers: list[ServerSpec], store: Store, settings: EngineSettings,
    sinks: list[Sink], progress: str = "auto", argv: list[str] | None = None,
    manifest: ManifestRecorder | None = None, gpu_monitor: bool = True,
) -> JobResult:
    report = source.report or source.scan()
    for problem in report.invalid:
        log.warning("skipping invalid line: %s", problem)
    return await run_requests(
        iter(source), servers=servers, store=store, settings=settings, sinks=sinks,
        models=report.models, total=report.rows, progress=progress, argv=argv, manifest=manifest,
        gpu_monitor=gpu_monitor,
    )


def open_sinks(output: str | None, output_dir: str | None, report: ScanReport,
               stack: ExitStack, *, inputs: Iterable[str] = ()) -> list[Sink]:
    """The writers asked for; the JSONL shape follows the input (Batch lines in, Batch lines out).
    ``inputs`` (the prompt file) may not be overwritten."""
    from .sinks import JsonlSink, PromptFilesSink

    sinks: list[Sink] = []
    if output:
        if Path(output).is_dir():
            raise UsageError(f"{output}: is a folder; use --output-dir for one file per prompt")
        sinks.append(JsonlSink(output, openai_batch=report.openai_batch, inputs=inputs))
        # If the job never starts (the store is locked, no server answers...), the empty .part goes.
        stack.callback(sinks[-1].close, complete=False)
    if output_dir:
        sinks.append(PromptFilesSink(output_dir))
    if not sinks:
        raise UsageError("no output: give -o results.jsonl and/or --output-dir DIR")
    return sinks
