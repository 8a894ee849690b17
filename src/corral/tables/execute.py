"""Run a TableRunner through the one runner: the part run_analysis, fill and the table files share."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import pandas as pd

from ..engine import JobStats
from ..errors import UsageError
from ..manifest import ManifestRecorder, data_facts
from ..runner import run_requests
from ..settings import Settings
from ..store import Store
from .runner import TableRunner


def model_list(model_names: str | Sequence[str]) -> tuple[str, ...]:
    names = [model_names] if isinstance(model_names, str) else list(model_names)
    models = tuple(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not models:
        raise UsageError("model_names is empty: give at least one model")
    return models


async def execute(runner: TableRunner, chunks: Iterable[pd.DataFrame], *, job: Settings,
                  store: str | os.PathLike[str] | Store | None, max_concurrent_calls: int | None,
                  max_json_retries: int, progress: str, total: int | None = None,
                  argv: list[str] | None = None, manifest: ManifestRecorder | None = None) -> JobStats:
    """A table job through the one runner: the runner's requests out, its chunks back."""
    settings = job.engine_settings(max_in_flight=max_concurrent_calls, content_retries=max_json_retries)
    journal = store if isinstance(store, Store) else Store(store)
    try:
        result = await run_requests(
            runner.requests(chunks), servers=job.servers, store=journal, settings=settings,
            sinks=[runner], models=runner.models, total=total, validate=runner.validate,
            progress=progress, argv=argv, manifest=manifest,
        )
    finally:
        if not isinstance(store, Store):
            journal.close()
    return result.stats


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


def table_job(runner: TableRunner, template: str, **extra: Any) -> dict[str, Any]:
    """The manifest's "job" section for a table run: what each row was asked, of which models."""
    return {"models": list(runner.models), "fanout": runner.fanout, "prompt_template": template,
            "system": runner.system, "options": runner.options, **extra}


def frame_facts(frame: pd.DataFrame) -> dict[str, Any]:
    """A DataFrame input fingerprinted by content (column names and every cell), for the manifest."""
    names = "\x1f".join(map(str, frame.columns)).encode("utf-8")
    try:
        cells = pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()
    except TypeError:  # unhashable cells (lists, dicts): hash their JSON text instead
        cells = frame.to_json(orient="values", default_handler=str).encode("utf-8")
    return data_facts("dataframe", [names, cells], len(frame))


def save_agreement(manifest: ManifestRecorder, frame: pd.DataFrame, runner: TableRunner) -> Any:
    """After a fan-out run with JSON keys: how much the models agree, kept in the manifest (and so in
    the store, for `corral report`). Returns the AgreementReport, or None when there is nothing to
    compare."""
    keys = getattr(runner.plan, "keys", None)
    if not (runner.fanout and keys and len(runner.models) > 1 and len(frame)):
        return None
    from .agreement import agreement

    try:
        report = agreement(frame, models=list(runner.models))
    except UsageError as exc:
        manifest.update(agreement={"error": str(exc)})
        return None
    manifest.update(agreement=report.to_dict())
    return report
