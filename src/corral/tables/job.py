"""A table job's two loops, over a DataFrame and over a table file, through the one runner.

Both turn rows into requests with a `TableRunner` and its answers back into chunks with new columns.
Over a DataFrame the chunks are gathered into the new frame; over a file, each chunk is written as
soon as its last answer arrives, so memory holds the chunks being worked on, never the table. A
file's output is written whole or not at all, its manifest lands beside it
(``<output>.manifest.json``) and its journal too (``<output>.corral.db``), so running the same call
again resumes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..engine import Engine, JobStats
from ..engine.run import Total
from ..errors import UsageError
from ..jobs import default_store_path
from ..limits import CHUNK_ROWS
from ..manifest import ManifestRecorder, file_facts
from ..runner import run_requests
from ..settings import Settings
from ..sources.tables import count_rows, to_pandas
from ..store import Store
from .provenance import frame_facts
from .runner import TableRunner
from .stream import TableStream

log = logging.getLogger("corral")

#: Builds the job's TableRunner once the input's columns are known; its chunks go to ``emit``.
RunnerFactory = Callable[[list[str], Callable[[pd.DataFrame], None]], TableRunner]
#: Builds the job's manifest from its runner and the input's facts (a file's, or a frame's).
ManifestFactory = Callable[[TableRunner, dict[str, Any]], ManifestRecorder]


def model_list(model_names: str | Sequence[str]) -> tuple[str, ...]:
    names = [model_names] if isinstance(model_names, str) else list(model_names)
    models = tuple(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not models:
        raise UsageError("model_names is empty: give at least one model")
    return models


@dataclass(slots=True)
class Where:
    """Where a table job runs: a fleet from resolved settings (the engine opened for the job), or
    an engine kept open by its owner (a Ray actor: no run record, progress or GPU sampling of its
    own, since the driver has those)."""

    job: Settings | None = None
    engine: Engine | None = None


async def execute(runner: TableRunner, chunks: Iterable[pd.DataFrame], *, where: Where,
                  store: str | os.PathLike[str] | Store | None, max_concurrent_calls: int | None = None,
                  max_json_retries: int = 2, progress: str = "none", total: Total = None,
                  argv: list[str] | None = None, manifest: ManifestRecorder | None = None) -> JobStats:
    """A table job through the one runner: the runner's requests out, its chunks back."""
    engine, job = where.engine, where.job
    settings = None if job is None else job.engine_settings(max_in_flight=max_concurrent_calls,
                                                            content_retries=max_json_retries)
    journal = store if isinstance(store, Store) else Store(store)
    try:
        result = await run_requests(
            runner.requests(chunks), servers=job.servers if job is not None else None, store=journal,
            settings=settings, engine=engine, sinks=[runner], models=runner.models, total=total,
            validate=runner.validate, ready=runner.ready, progress=progress, argv=argv, manifest=manifest,
            gpu_monitor=engine is None, track=engine is None,
        )
    finally:
        if not isinstance(store, Store):
            journal.close()
    return result.stats


def job_total(runner: TableRunner, rows: int | None, per_row: int) -> Total:
    """The requests a table job will send: ``rows * per_row``; or, for a job that sends only some
    rows (``per_row=0``: a fill asks only for rows with something missing), the requests planned
    for the rows read so far plus as many again, pro rata, for the rows not read yet (exact once
    every row is read). Without it a fill's progress had no total, so no ETA."""
    if not rows:
        return None
    if per_row:
        return rows * per_row

    def planned() -> int | None:
        if runner.rows_read <= 0:
            return None
        left = max(0, rows - runner.rows_read)
        return runner.requests_planned + round(left * runner.requests_planned / runner.rows_read)

    return planned


def progress_mode(progress: bool | str) -> str:
    if isinstance(progress, str):
        return progress
    return "auto" if progress else "none"


def like_input(original: Any, out: pd.DataFrame) -> Any:
    """Give polars users a polars DataFrame back."""
    if type(original).__module__.startswith("polars"):
        import polars as pl

        return pl.from_pandas(out)
    return out


async def run_table_frame(
    df: Any, *, build: RunnerFactory, describe: ManifestFactory | None, where: Where, per_row: int = 1,
    store: str | os.PathLike[str] | Store | None = None, chunk_size: int = CHUNK_ROWS,
    max_concurrent_calls: int | None = None, max_json_retries: int = 2, progress: str = "auto",
    empty: Callable[[pd.DataFrame, TableRunner], pd.DataFrame] | None = None,
) -> tuple[pd.DataFrame, TableRunner, ManifestRecorder | None]:
    """The DataFrame loop: the new pandas frame (in the input's row order; `like_input` gives polars
    users theirs back), the runner that asked, and the run's manifest. ``empty`` builds the result of
    a frame with no rows."""
    frame = to_pandas(df)
    parts: list[pd.DataFrame] = []
    runner = build([str(c) for c in frame.columns], parts.append)
    chunks = [frame.iloc[s:s + chunk_size] for s in range(0, len(frame), chunk_size)]
    recorder = describe(runner, frame_facts(frame)) if describe is not None else None
    await execute(runner, chunks, where=where, store=store, max_concurrent_calls=max_concurrent_calls,
                  max_json_retries=max_json_retries, progress=progress,
                  total=job_total(runner, len(frame), per_row), manifest=recorder)
    if runner.skipped_count:
        log.warning("%d row(s) not sent: %s", runner.skipped_count, "; ".join(runner.skipped[:5]))
    if parts:
        out = pd.concat(parts, ignore_index=True)
    else:
        out = empty(frame.iloc[0:0], runner) if empty is not None else frame.iloc[0:0].copy()
    out.index = frame.index
    return out, runner, recorder


@dataclass(slots=True)
class TableFileReport:
    """What a table-file job did: rows written, the engine's counts, rows not sent and why."""

    output: Path
    written: int
    stats: JobStats
    manifest: Path | None
    skipped: list[str] = field(default_factory=list)   # the first reasons, "row N: empty text"
    skipped_count: int = 0
    agreement: Any = None          # an AgreementReport after a fan-out with JSON keys
    agreement_error: str | None = None
    runner: TableRunner | None = field(default=None, repr=False)
    recorder: ManifestRecorder | None = field(default=None, repr=False)


async def run_table_file(
    input: str | os.PathLike[str], output: str | os.PathLike[str], *, build: RunnerFactory,
    describe: ManifestFactory | None, where: Where, required: Sequence[str] = (), per_row: int = 1,
    store: str | os.PathLike[str] | Store | None = None, chunk_size: int = CHUNK_ROWS,
    neutralize_formulas: bool = True, max_concurrent_calls: int | None = None,
    max_json_retries: int = 2, progress: str = "auto", argv: list[str] | None = None,
    chunks: Iterable[pd.DataFrame] | None = None, rows: int | None = None, encoding: str | None = None,
) -> TableFileReport:
    """The loop every table-file job shares: stream, ask, write; the output complete or absent.

    ``chunks`` replaces reading ``input`` whole (a Ray partition's row groups); ``rows`` is then the
    row count when known; ``encoding`` is a CSV or TSV input's, when not UTF-8."""
    table = TableStream(input, output, chunk_size=chunk_size, neutralize_formulas=neutralize_formulas,
                        chunks=chunks, encoding=encoding)
    complete = False
    try:
        table.require_columns(required)
        runner = build(table.columns, table.emit)
        if chunks is None:
            rows = count_rows(input, encoding=encoding)
        recorder = describe(runner, file_facts(input, rows)) if describe is not None else None
        journal = store if store is not None else default_store_path(str(output), None)
        stats = await execute(runner, table.chunks(), where=where, store=journal,
                              max_concurrent_calls=max_concurrent_calls, max_json_retries=max_json_retries,
                              progress=progress, total=job_total(runner, rows, per_row), argv=argv,
                              manifest=recorder)
        complete = True
    finally:
        table.close(complete=complete)
    if runner.skipped_count:
        log.warning("%d row(s) not sent: %s", runner.skipped_count, "; ".join(runner.skipped[:5]))
    return TableFileReport(output=Path(output), written=table.written, stats=stats,
                           manifest=recorder.path if recorder is not None else None,
                           skipped=list(runner.skipped), skipped_count=runner.skipped_count,
                           runner=runner, recorder=recorder)


