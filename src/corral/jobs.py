"""A prompt file as a job: its source, its sinks and where its journal lives.

`corral run` is a thin layer over this; the lifecycle itself is the one runner's (`corral.runner`).
Nothing here speaks HTTP or parses a wire format.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from .checks import batch_answer_problem
from .config import ServerSpec
from .engine import EngineSettings
from .errors import UsageError
from .manifest import ManifestRecorder
from .reload import ConfigFile
from .runner import JobResult, Sink, run_requests
from .sources import PromptFile, ScanReport
from .store import Store, stored_scan

log = logging.getLogger("corral")


def default_store_path(output: str | None, output_dir: str | None) -> Path | None:
    """The store lives beside the output, so re-running the same command finds it."""
    if output:
        return Path(output).with_name(Path(output).name + ".corral.db")
    if output_dir:
        return Path(output_dir) / ".corral.db"
    return None


def scan_once(source: PromptFile, journal: str | os.PathLike[str] | None
              ) -> tuple[ScanReport, dict[str, Any], str, bool]:
    """(report, the input's file facts, the report's key, whether it was scanned now): the report
    ``journal`` keeps for these bytes and settings if it has one, else a fresh scan (to be saved
    with `Store.save_scan`). The facts (`corral.manifest.file_facts`) name the bytes by SHA-256."""
    from .manifest import file_facts

    try:
        facts = file_facts(source.path, None)
    except OSError:
        source.scan()  # says what is wrong with the file, in one line
        raise
    key = source.scan_key(facts["sha256"])
    kept = stored_scan(journal, key) if journal is not None else None
    if kept is not None:
        return source.adopt(ScanReport.from_json(kept)), facts, key, False
    return source.scan(), facts, key, True


async def run_prompt_file(
    source: PromptFile, *, servers: list[ServerSpec], store: Store, settings: EngineSettings,
    sinks: list[Sink], progress: str = "auto", argv: list[str] | None = None,
    manifest: ManifestRecorder | None = None, gpu_monitor: bool = True, reload: ConfigFile | None = None,
) -> JobResult:
    """Run a prompt file. An OpenAI Batch file is run the way vLLM's run-batch runs it: a line whose
    model no server has gets an error line and the others run, and an answer cut at the token limit
    is an answer (`checks.batch_answer_problem`)."""
    report = source.report or source.scan()
    for problem in report.invalid:
        log.warning("skipping invalid line: %s", problem)
    batch = report.openai_batch
    return await run_requests(
        iter(source), servers=servers, store=store, settings=settings, sinks=sinks,
        models=report.models, total=report.rows, progress=progress, argv=argv, manifest=manifest,
        gpu_monitor=gpu_monitor, fail_unserved=batch, reload=reload, validate=batch_answer_problem if batch else None,
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
