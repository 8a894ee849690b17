"""`corral run FILES --ray ADDRESS`: the CLI side; the work is in `corral.ray.job` (the extra)."""

from __future__ import annotations

import os
import sys
from typing import Any

import typer

from ..errors import UsageError
from .common import load_schema, read_text_arg


def refuse(flags: dict[str, Any]) -> None:
    """Flags of the one-process path that --ray does not honour: an error, not silently ignored."""
    given = [flag for flag, value in flags.items() if value]
    if given:
        raise UsageError(f"--ray does not take {', '.join(given)} (see README: Scale out on Ray)")


def run_on_ray(inputs: list[str], output: str | None, *, address: str, config: str | None,
               server: list[str], api: str, model: str | None, system: str | None,
               schema: str | None, options: dict[str, Any], text_column: str, prompt: str | None,
               workers: int | None, actors: int | None, output_format: str, timeout: float | None,
               max_attempts: int | None, progress: str, partition_rows: int = 1_000_000,
               column_prefix: str = "") -> None:
    if not inputs:
        raise UsageError("no input: corral run big/*.parquet --ray auto -o out/")
    if not output:
        raise UsageError("no output: give -o FOLDER (one output file per input file)")
    if address == "local":
        # Ray's single-machine mode: every Ray process on 127.0.0.1, nothing listening outside.
        # Read when Ray is imported, so it is set before.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        from ..ray.job import run_files
        from ..ray.worker import TableJob
    except ImportError as exc:
        raise UsageError(f"--ray needs Ray: pip install 'corral[ray]' ({exc})") from None
    job = TableJob(text_column=text_column,
                   model_names=tuple(m.strip() for m in (model or "").split(",") if m.strip()),
                   prompt_template=read_text_arg(prompt, "--prompt"),
                   json_schema=load_schema(schema) if schema else None,
                   system=read_text_arg(system, "--system"), options=options, column_prefix=column_prefix)
    done = run_files(inputs, output, address=address, job=job, config=config, servers=server or None,
                     api=api, workers=workers, num_actors=actors, output_format=output_format,
                     timeout=timeout, max_attempts=max_attempts or 5, progress=progress,
                     rows_per_partition=partition_rows)
    rows = sum(s.rows for s in done)
    failed = sum(s.failed for s in done)
    broken = [s for s in done if s.error]
    print(f"corral: {len(done) - len(broken)} partition(s) written, {rows} rows ({failed} failed) "
          f"in {output}", file=sys.stderr)
    for stats in broken:
        print(f"corral: {stats.path}: not done: {stats.error}", file=sys.stderr)
    if broken:
        print("corral: run the same command again to do the partitions left", file=sys.stderr)
    if broken or failed:
        raise typer.Exit(1)
