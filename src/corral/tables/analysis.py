"""`run_analysis`: one prompt over every row of a DataFrame, split across models or fanned out.

The signature and column names are seed 000's (ollama-run-async): ``workers``, ``model_names``,
``prompt_template`` with ``{text}``, ``json_keys`` becoming columns, ``fanout=True`` suffixing every
new column with ``_<model>`` (``label_llama3.2``). Split mode pulls rows from one queue, so a slow model
answers fewer rows instead of holding the tail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ..api import run_sync
from ..errors import UsageError
from ..manifest import ManifestRecorder
from ..store import Store
from .answers import resolve_schema
from .execute import (ServerChoice, execute, frame_facts, like_input, model_list, progress_mode,
                      save_agreement, server_specs, table_job)
from ..sources.tables import to_pandas
from .prompts import PromptTemplate, default_template, is_missing
from .runner import RowPlan, RowResult, TableRunner, add_answer_columns

log = logging.getLogger("corral")


class AnalysisPlan:
    """What to ask of each row, checked against the table before anything is sent."""

    def __init__(self, columns: list[str], text_column: str, prompt_template: str | None,
                 json_keys: Sequence[str] | str | None, json_schema: Any) -> None:
        if text_column not in columns:
            raise UsageError(f"text column {text_column!r} is not in the table; columns are: "
                             f"{', '.join(map(str, columns))}")
        self.text_column = text_column
        self.keys, self.schema, self.model_class = resolve_schema(json_keys, json_schema)
        self.template = PromptTemplate(prompt_template or default_template(self.keys), text_column,
                                       [str(c) for c in columns])

    def __call__(self, row: dict[str, Any]) -> RowPlan | str:
        if is_missing(row.get(self.text_column)):
            return "empty text"
        return RowPlan(prompt=self.template.render(row), keys=self.keys, schema=self.schema,
                       model_class=self.model_class)


def build_runner(columns: list[str], emit: Any, *, text_column: str, models: tuple[str, ...],
                 fanout: bool, prompt_template: str | None, json_keys: Any, json_schema: Any,
                 system: str | None, options: dict[str, Any], id_column: str | None = None) -> TableRunner:
    plan = AnalysisPlan(columns, text_column, prompt_template, json_keys, json_schema)
    if id_column is not None and id_column not in columns:
        raise UsageError(f"id column {id_column!r} is not in the table")

    def finish(frame: pd.DataFrame, results: list[RowResult]) -> pd.DataFrame:
        return add_answer_columns(frame, results, models, fanout, plan.keys)

    return TableRunner(models=models, fanout=fanout, system=system, options=options, plan=plan,
                       finish=finish, emit=emit, id_column=id_column)


async def run_analysis_async(
    df: Any, text_column: str = "text", workers: int = 3, max_concurrent_calls: int | None = None, *,
    model_names: str | Sequence[str] = "llama3.2", prompt_template: str | None = None,
    json_keys: Sequence[str] | str | None = None, fanout: bool = False, json_schema: Any = None,
    system: str | None = None, servers: Any = None, config: str | None = None, api: str = "ollama",
    store: str | os.PathLike[str] | Store | None = None, max_json_retries: int = 2,
    timeout: float | None = None, progress: bool | str = True, chunk_size: int = 20_000,
    manifest: str | os.PathLike[str] | None = None, **options: Any,
) -> Any:
    """The async twin of `run_analysis`."""
    frame = to_pandas(df)
    models = model_list(model_names)
    specs, cfg = server_specs(ServerChoice(servers, config, api), workers)
    parts: list[pd.DataFrame] = []
    runner = build_runner(
        list(frame.columns), parts.append, text_column=text_column, models=models, fanout=fanout,
        prompt_template=prompt_template, json_keys=json_keys, json_schema=json_schema,
        system=system or cfg.get("system"), options={**cfg.get("options", {}), **options},
    )
    chunks = (frame.iloc[start:start + chunk_size] for start in range(0, len(frame), chunk_size))
    per_row = len(models) if fanout else 1
    recorder = analysis_manifest(runner, frame_facts(frame), manifest, text_column=text_column,
                                 kind="run_analysis")
    await execute(runner, chunks, specs=specs, store=store, max_concurrent_calls=max_concurrent_calls,
                  timeout=timeout or cfg.get("timeout"), hedge=cfg.get("hedge") is not False,
                  max_json_retries=max_json_retries,
                  progress=progress_mode(progress), total=len(frame) * per_row, manifest=recorder)
    if runner.skipped_count:
        log.warning("%d row(s) not sent: %s", runner.skipped_count, "; ".join(runner.skipped[:5]))
    out = pd.concat(parts, ignore_index=True) if parts else add_answer_columns(
        frame.iloc[0:0], [], models, fanout, runner.plan.keys)  # type: ignore[attr-defined]
    out.index = frame.index
    save_agreement(recorder, out, runner)
    return like_input(df, out)


def analysis_manifest(runner: TableRunner, input_facts: dict[str, Any],
                      path: str | os.PathLike[str] | None, *, text_column: str, kind: str = "analyze",
                      output: str | None = None, argv: list[str] | None = None) -> ManifestRecorder:
    """The manifest of an analysis run: the prompt template as sent, the keys or schema asked for."""
    plan: AnalysisPlan = runner.plan  # type: ignore[assignment]
    job = table_job(runner, plan.template.template, text_column=text_column,
                    json_keys=list(plan.keys) if plan.keys else None, format=plan.schema)
    return ManifestRecorder(kind=kind, job=job, input=input_facts, argv=argv,
                            path=Path(path) if path is not None else None, output={"path": output})


def run_analysis(
    df: Any, text_column: str = "text", workers: int = 3, max_concurrent_calls: int | None = None, *,
    model_names: str | Sequence[str] = "llama3.2", prompt_template: str | None = None,
    json_keys: Sequence[str] | str | None = None, fanout: bool = False, **kwargs: Any,
) -> Any:
    """Run one prompt over every row; return a new DataFrame in the input's row order.

    ``fanout=False`` shares the rows among ``model_names`` (one queue; a ``model`` column says who
    answered); ``fanout=True`` has every model answer every row, with columns suffixed ``_<model>``.
    ``workers`` is the number of requests in flight per server (unless a server's config says
    otherwise); ``max_concurrent_calls`` caps the total. New columns: ``response``, one column per JSON
    key, ``model`` and ``error`` (an error is always a reason, never a silent NaN). Keywords:
    ``json_schema`` (dict or pydantic class), ``system``, ``servers``, ``config``, ``api``, ``store``
    (a journal path: re-running resumes), ``manifest`` (a path for the run's manifest JSON, with the
    agreement statistics after a fan-out; the store keeps it either way), ``max_json_retries``,
    ``timeout``, ``progress``, and any model option (``temperature=0, seed=1, num_ctx=4096``...). Works in
    scripts and in Jupyter alike.
    """
    return run_sync(run_analysis_async(
        df, text_column, workers, max_concurrent_calls, model_names=model_names,
        prompt_template=prompt_template, json_keys=json_keys, fanout=fanout, **kwargs))
