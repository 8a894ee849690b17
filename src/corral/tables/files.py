"""Table files in, table files out: `analyze_file` (`corral analyze`) and the loop `fill` shares.

A table-file job streams the input in chunks, asks one request per row (or per row and model), and
writes each chunk with its new columns as soon as its last answer arrives, so memory holds the
chunks being worked on, never the table. The output is written whole or not at all, and its
manifest lands beside it (``<output>.manifest.json``); the journal beside it too
(``<output>.corral.db``), so running the same call again resumes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..engine import JobStats
from ..jobs import default_store_path
from ..manifest import ManifestRecorder, file_facts, manifest_path
from ..runtime import run_sync
from ..settings import ConfigLike, ServerLike, Settings, resolve
from ..store import Store
from .execute import execute, model_list, progress_mode, save_agreement
from .io import TableStream, count_rows, read_table
from .runner import TableRunner

log = logging.getLogger("corral")

#: Builds the job's TableRunner once the input's columns are known; its chunks go to ``emit``.
RunnerFactory = Callable[[list[str], Callable[[pd.DataFrame], None]], TableRunner]
#: Builds the job's manifest from its runner and the input file's facts.
ManifestFactory = Callable[[TableRunner, dict[str, Any]], ManifestRecorder]


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
    describe: ManifestFactory, job: Settings, required: Sequence[str], per_row: int = 1,
    store: str | os.PathLike[str] | Store | None = None, chunk_size: int = 20_000,
    neutralize_formulas: bool = True, max_concurrent_calls: int | None = None,
    max_json_retries: int = 2, progress: str = "auto", argv: list[str] | None = None,
) -> TableFileReport:
    """The loop every table-file job shares: stream, ask, write; the output complete or absent."""
    table = TableStream(input, output, chunk_size=chunk_size, neutralize_formulas=neutralize_formulas)
    complete = False
    try:
        table.require_columns(required)
        runner = build(table.columns, table.emit)
        rows = count_rows(input)
        recorder = describe(runner, file_facts(input, rows))
        journal = store if store is not None else default_store_path(str(output), None)
        stats = await execute(runner, table.chunks(), job=job, store=journal,
                              max_concurrent_calls=max_concurrent_calls, max_json_retries=max_json_retries,
                              progress=progress, total=rows * per_row if rows and per_row else None, argv=argv,
                              manifest=recorder)
        complete = True
    finally:
        table.close(complete=complete)
    if runner.skipped_count:
        log.warning("%d row(s) not sent: %s", runner.skipped_count, "; ".join(runner.skipped[:5]))
    return TableFileReport(output=Path(output), written=table.written, stats=stats, manifest=recorder.path,
                           skipped=list(runner.skipped), skipped_count=runner.skipped_count,
                           runner=runner, recorder=recorder)


async def analyze_file_async(
    input: str | os.PathLike[str], output: str | os.PathLike[str], *, text_column: str = "text",
    model_names: str | Sequence[str] = "llama3.2", prompt_template: str | None = None,
    json_keys: Sequence[str] | str | None = None, json_schema: Any = None, fanout: bool = False,
    system: str | None = None, servers: ServerLike | Sequence[ServerLike] | None = None,
    config: ConfigLike | None = None, api: str = "ollama", local: bool = False, workers: int = 3,
    max_concurrent_calls: int | None = None, id_column: str | None = None, chunk_size: int = 20_000,
    max_json_retries: int = 2, store: str | os.PathLike[str] | None = None,
    timeout: float | None = None, neutralize_formulas: bool = True, progress: bool | str = True,
    argv: list[str] | None = None, **options: Any,
) -> TableFileReport:
    """The async twin of `analyze_file`."""
    from .analysis import analysis_manifest, build_runner

    with ExitStack() as stack:
        job = resolve(servers=servers, config=config, api=api, local=local, stack=stack,
                      local_parallel=max(workers, 1), workers=workers, system=system, options=options,
                      timeout=timeout)
        models = (job.local_model,) if job.local_model else model_list(model_names)

        def build(columns: list[str], emit: Callable[[pd.DataFrame], None]) -> TableRunner:
            return build_runner(columns, emit, text_column=text_column, models=models, fanout=fanout,
                                prompt_template=prompt_template, json_keys=json_keys,
                                json_schema=json_schema, system=job.system, options=job.options,
                                id_column=id_column)

        def describe(runner: TableRunner, facts: dict[str, Any]) -> ManifestRecorder:
            recorder = analysis_manifest(runner, facts, manifest_path(output), text_column=text_column,
                                         output=str(output), argv=argv)
            recorder.job.update(local=local, id_column=id_column)
            return recorder

        report = await run_table_file(
            input, output, build=build, describe=describe, job=job, required=[text_column, id_column or ""],
            per_row=len(models) if fanout else 1, store=store, chunk_size=chunk_size,
            neutralize_formulas=neutralize_formulas, max_concurrent_calls=max_concurrent_calls,
            max_json_retries=max_json_retries, progress=progress_mode(progress), argv=argv)
    runner = report.runner
    keys = getattr(runner.plan, "keys", None) if runner is not None else None
    recorder = report.recorder
    if fanout and keys and len(models) > 1 and report.written and runner is not None and recorder:
        report.agreement = save_agreement(recorder, read_table(output), runner)
        report.agreement_error = (recorder.data.get("agreement") or {}).get("error")
    return report


def analyze_file(input: str | os.PathLike[str], output: str | os.PathLike[str], **kwargs: Any) -> TableFileReport:
    """Run one prompt over every row of a table file and write the table with its answers:
    `corral analyze` from Python, with `run_analysis`'s keywords.

    The input is read in chunks of ``chunk_size`` rows (CSV, TSV, Parquet, JSONL, Excel) and the
    output (by its extension) written chunk by chunk; memory does not grow with the file. The output
    appears only when complete. The journal beside it (``<output>.corral.db``, or ``store=``) makes a
    second call resume: rows already answered are not sent again. ``local=True`` runs the embedded
    llama.cpp model. Returns a `TableFileReport` (rows written, counts, rows not sent, and after a
    fan-out with ``json_keys`` the models' agreement).

    >>> corral.analyze_file("speeches.csv", "labelled.parquet", model_names=["llama3.2", "mistral"],
    ...                     json_keys=["label"], fanout=True, temperature=0)
    """
    return run_sync(analyze_file_async(input, output, **kwargs))
