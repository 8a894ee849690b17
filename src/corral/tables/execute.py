"""Run a TableRunner through the engine: the part run_analysis, fill and the CLI share."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from ..api import resolve_server_list
from ..config import ServerSpec
from ..engine import EngineSettings, JobStats, RetryPolicy
from ..errors import UsageError
from ..jobs import run_requests
from ..manifest import ManifestRecorder, data_facts
from ..store import Store
from .runner import TableRunner


@dataclass(slots=True)
class ServerChoice:
    """Where to send work: explicit servers, a config file, or OLLAMA_HOST."""

    servers: Any = None
    config: str | None = None
    api: str = "ollama"


def model_list(model_names: str | Sequence[str]) -> tuple[str, ...]:
    names = [model_names] if isinstance(model_names, str) else list(model_names)
    models = tuple(dict.fromkeys(n.strip() for n in names if n and n.strip()))
    if not models:
        raise UsageError("model_names is empty: give at least one model")
    return models


def server_specs(choice: ServerChoice, workers: int | None) -> tuple[list[ServerSpec], dict[str, Any]]:
    """Servers with ``workers`` slots each, unless a server's config sets its own max_concurrency."""
    specs, cfg = resolve_server_list(choice.servers, choice.config, choice.api)
    if workers is not None:
        if workers < 1:
            raise UsageError("workers must be at least 1")
        specs = [s if s.max_concurrency else replace(s, max_concurrency=workers) for s in specs]
    return specs, cfg


async def execute(runner: TableRunner, chunks: Iterable[pd.DataFrame], *, specs: list[ServerSpec],
                  store: str | os.PathLike[str] | Store | None, max_concurrent_calls: int | None,
                  timeout: float | None, max_json_retries: int, progress: str,
                  total: int | None = None, argv: list[str] | None = None,
                  manifest: ManifestRecorder | None = None, hedge: bool = True) -> JobStats:
    settings = EngineSettings(
        timeout=timeout, hedge=hedge, retry=RetryPolicy(), max_in_flight=max_concurrent_calls,
        content_retries=max_json_retries,
    )
    journal = store if isinstance(store, Store) else Store(store)
    try:
        result = await run_requests(
            runner.requests(chunks), servers=specs, store=journal, settings=settings, sinks=[runner],
            models=runner.models, total=total, progress=progress, argv=argv, manifest=manifest,
            validate=runner.validate,
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
