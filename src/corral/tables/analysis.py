"""`run_analysis` and `analyze_file`: one prompt over every row of a DataFrame or a table file, split
across models or fanned out.

The signature and column names are Ollama-run-async's: ``workers``, ``model_names``,
``prompt_template`` with ``{text}``, ``json_keys`` becoming columns, ``fanout=True`` suffixing every
new column with ``_<model>`` (``label_llama3.2``). Split mode pulls rows from one queue, so a slow model
answers fewer rows instead of holding the tail.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import UsageError
from ..limits import CHUNK_ROWS
from ..manifest import ManifestRecorder, manifest_path
from ..options import checked_keywords
from ..runtime import run_sync
from ..settings import DEFAULT_WORKERS, LOCAL_PARALLEL, ConfigLike, ServerLike, Settings, resolve
from ..sources.tables import read_table
from ..store import Store
from .answer_types import JsonKeys, json_types
from .answers import resolve_schema
from .job import (
    RunnerFactory,
    TableFileReport,
    Where,
    like_input,
    model_list,
    progress_mode,
    run_table_file,
    run_table_frame,
)
from .prompts import PromptTemplate, default_template, is_missing
from .provenance import save_agreement, table_job
from .runner import (
    RowPlan,
    RowResult,
    TableRunner,
    add_answer_columns,
    answer_column_names,
    refuse_clashes,
)

log = logging.getLogger("corral")


class AnalysisPlan:
    """What to ask of each row, checked against the table before anything is sent."""

    def __init__(self, columns: list[str], text_column: str, prompt_template: str | None,
                 json_keys: JsonKeys, json_schema: Any) -> None:
        if text_column not in columns:
            raise UsageError(f"text column {text_column!r} is not in the table; columns are: "
                             f"{', '.join(map(str, columns))}")
        self.text_column = text_column
        self.keys, self.schema, self.model_class = resolve_schema(json_keys, json_schema)
        self.types = json_types(self.schema) if self.schema else {}
        self.template = PromptTemplate(prompt_template or default_template(self.keys), text_column,
                                       [str(c) for c in columns])
        #: The columns a row's plan reads: only these are taken out of each chunk.
        self.reads = [text_column, *self.template.columns()]

    def __call__(self, row: dict[str, Any]) -> RowPlan | str:
        if is_missing(row.get(self.text_column)):
            return "empty text"
        return RowPlan(prompt=self.template.render(row), keys=self.keys, schema=self.schema,
                       model_class=self.model_class)


def build_runner(columns: list[str], emit: Any, *, text_column: str, models: tuple[str, ...],
                 fanout: bool, prompt_template: str | None, json_keys: Any, json_schema: Any,
                 system: str | None, options: dict[str, Any], id_column: str | None = None,
                 column_prefix: str = "") -> TableRunner:
    plan = AnalysisPlan(columns, text_column, prompt_template, json_keys, json_schema)
    if id_column is not None and id_column not in columns:
        raise UsageError(f"id column {id_column!r} is not in the table")
    check_answer_columns(columns, models, fanout, plan.keys, column_prefix)

    def finish(frame: pd.DataFrame, results: list[RowResult]) -> pd.DataFrame:
        return add_answer_columns(frame, results, models, fanout, plan.keys, column_prefix, plan.types)

    return TableRunner(models=models, fanout=fanout, system=system, options=options, plan=plan,
                       finish=finish, emit=emit, id_column=id_column)


def check_answer_columns(columns: list[str], models: tuple[str, ...], fanout: bool,
                         keys: tuple[str, ...] | None, prefix: str) -> None:
    """Refuse, before anything is sent, an analysis whose new columns would replace the table's
    own (``label`` asked for as a JSON key in a table of gold labels) or each other (a JSON key
    named ``model``, ``response`` or ``error``)."""
    new = answer_column_names(models, fanout, keys, prefix)
    doubled = sorted({name for name in new if new.count(name) > 1})
    if doubled:
        raise UsageError(f"JSON key(s) {', '.join(repr(d) for d in doubled)} would share a column "
                         "with corral's own response/model/error columns; ask for another key name")
    refuse_clashes([str(c) for c in columns], new, option="--column-prefix (column_prefix= in Python)",
                   example="--column-prefix llm_")


@checked_keywords()
async def run_analysis_async(
    df: Any, text_column: str = "text", workers: int | None = DEFAULT_WORKERS,
    max_concurrent_calls: int | None = None, *,
    model_names: str | Sequence[str] = "llama3.2", prompt_template: str | None = None,
    json_keys: JsonKeys = None, fanout: bool = False, json_schema: Any = None,
    system: str | None = None, servers: Any = None, local: bool = False, config: ConfigLike | None = None,
    api: str = "ollama", store: str | os.PathLike[str] | Store | None = None, max_json_retries: int = 2,
    timeout: float | None = None, progress: bool | str = True, chunk_size: int = CHUNK_ROWS,
    manifest: str | os.PathLike[str] | None = None, column_prefix: str = "",
    extra_options: dict[str, Any] | None = None, **options: Any,
) -> Any:
    """The async twin of `run_analysis`."""
    with ExitStack() as stack:
        job = resolve(servers=servers, config=config, api=api, local=local, stack=stack,
                      local_parallel=workers or LOCAL_PARALLEL, workers=workers, system=system,
                      options=options, extra_options=extra_options, timeout=timeout)
        models = (job.local_model,) if job.local_model else model_list(model_names)
        return await _analyse_frame(df, job, models, text_column=text_column, fanout=fanout,
                                    prompt_template=prompt_template, json_keys=json_keys,
                                    json_schema=json_schema, column_prefix=column_prefix, store=store,
                                    chunk_size=chunk_size, max_concurrent_calls=max_concurrent_calls,
                                    max_json_retries=max_json_retries, progress=progress,
                                    manifest=manifest)


async def _analyse_frame(df: Any, job: Settings, models: tuple[str, ...], *, text_column: str, fanout: bool,
                         prompt_template: str | None, json_keys: Any, json_schema: Any, column_prefix: str,
                         store: str | os.PathLike[str] | Store | None, chunk_size: int,
                         max_concurrent_calls: int | None, max_json_retries: int, progress: bool | str,
                         manifest: str | os.PathLike[str] | None) -> Any:
    """A DataFrame through the table loop with the job's settings; the new frame, like the input."""
    build = _builder(job, models, text_column=text_column, fanout=fanout, prompt_template=prompt_template,
                     json_keys=json_keys, json_schema=json_schema, column_prefix=column_prefix)

    def describe(runner: TableRunner, facts: dict[str, Any]) -> ManifestRecorder:
        return analysis_manifest(runner, facts, manifest, text_column=text_column, kind="run_analysis")

    def empty(frame: pd.DataFrame, runner: TableRunner) -> pd.DataFrame:
        plan: AnalysisPlan = runner.plan  # type: ignore[assignment]
        return add_answer_columns(frame, [], models, fanout, plan.keys, column_prefix, plan.types)

    out, runner, recorder = await run_table_frame(
        df, build=build, describe=describe, where=Where(job), per_row=len(models) if fanout else 1, store=store,
        chunk_size=chunk_size, max_concurrent_calls=max_concurrent_calls,
        max_json_retries=max_json_retries, progress=progress_mode(progress), empty=empty)
    if recorder is not None:
        save_agreement(recorder, out, runner)
    return like_input(df, out)


def _builder(job: Settings, models: tuple[str, ...], *, text_column: str, fanout: bool,
             prompt_template: str | None, json_keys: Any, json_schema: Any,
             id_column: str | None = None, column_prefix: str = "") -> RunnerFactory:
    """The analysis runner for a table with the given columns, asking with the job's settings."""

    def build(columns: list[str], emit: Callable[[pd.DataFrame], None]) -> TableRunner:
        return build_runner(columns, emit, text_column=text_column, models=models, fanout=fanout,
                            prompt_template=prompt_template, json_keys=json_keys,
                            json_schema=json_schema, system=job.system, options=job.options,
                            id_column=id_column, column_prefix=column_prefix)

    return build


def analysis_manifest(runner: TableRunner, input_facts: dict[str, Any],
                      path: str | os.PathLike[str] | None, *, text_column: str, kind: str = "analyze",
                      output: str | None = None, argv: list[str] | None = None) -> ManifestRecorder:
    """The manifest of an analysis run: the prompt template as sent, the keys or schema asked for."""
    plan: AnalysisPlan = runner.plan  # type: ignore[assignment]
    job = table_job(runner, plan.template.template, text_column=text_column,
                    json_keys=list(plan.keys) if plan.keys else None, format=plan.schema)
    return ManifestRecorder(kind=kind, job=job, input=input_facts, argv=argv,
                            path=Path(path) if path is not None else None, output={"path": output})


@checked_keywords(run_analysis_async)
def run_analysis(
    df: Any, text_column: str = "text", workers: int | None = DEFAULT_WORKERS,
    max_concurrent_calls: int | None = None, *,
    model_names: str | Sequence[str] = "llama3.2", prompt_template: str | None = None,
    json_keys: JsonKeys = None, fanout: bool = False, **kwargs: Any,
) -> Any:
    """Run one prompt over every row; return a new DataFrame in the input's row order.

    ``fanout=False`` shares the rows among ``model_names`` (one queue; a ``model`` column says who
    answered); ``fanout=True`` has every model answer every row, with columns suffixed ``_<model>``.
    A new column is never written over one the table has: such a clash is refused before anything
    is sent, and ``column_prefix="llm_"`` names the new columns ``llm_response``, ``llm_label``...
    ``workers`` is the number of calls at once on a server, never exceeded (left at its default, a
    server's own ``max_concurrency`` in the config wins; None: each server's own slots, learnt);
    ``max_concurrent_calls`` caps the total over all servers. New columns: ``response``, one column
    per JSON key, ``model`` and ``error`` (an error is always a reason, never a silent NaN). Keywords:
    ``json_schema`` (dict or pydantic class), ``system``, ``servers`` (URLs, or ``"local"``),
    ``local=True`` (the embedded llama.cpp model), ``config``, ``api``, ``store``
    (a journal path: re-running resumes), ``manifest`` (a path for the run's manifest JSON, with the
    agreement statistics after a fan-out; the store keeps it either way), ``max_json_retries``,
    ``timeout``, ``progress``, and any model option (``temperature=0, seed=1, num_ctx=4096``...; a
    misspelt name is an error with a did-you-mean, ``extra_options={...}`` sends options corral does
    not know). Works in scripts and in Jupyter alike.
    """
    return run_sync(run_analysis_async(
        df, text_column, workers, max_concurrent_calls, model_names=model_names,
        prompt_template=prompt_template, json_keys=json_keys, fanout=fanout, **kwargs))


@checked_keywords()
async def analyze_file_async(
    input: str | os.PathLike[str], output: str | os.PathLike[str], *, text_column: str = "text",
    model_names: str | Sequence[str] = "llama3.2", prompt_template: str | None = None,
    json_keys: JsonKeys = None, json_schema: Any = None, fanout: bool = False,
    system: str | None = None, servers: ServerLike | Sequence[ServerLike] | None = None,
    config: ConfigLike | None = None, api: str = "ollama", local: bool = False, workers: int | None = DEFAULT_WORKERS,
    max_concurrent_calls: int | None = None, id_column: str | None = None, chunk_size: int = CHUNK_ROWS,
    max_json_retries: int = 2, store: str | os.PathLike[str] | None = None,
    timeout: float | None = None, neutralize_formulas: bool = True, progress: bool | str = True,
    argv: list[str] | None = None, column_prefix: str = "", encoding: str | None = None,
    extra_options: dict[str, Any] | None = None, **options: Any,
) -> TableFileReport:
    """The async twin of `analyze_file`."""
    with ExitStack() as stack:
        job = resolve(servers=servers, config=config, api=api, local=local, stack=stack,
                      local_parallel=workers or LOCAL_PARALLEL, workers=workers, system=system,
                      options=options, extra_options=extra_options, timeout=timeout)
        models = (job.local_model,) if job.local_model else model_list(model_names)

        build = _builder(job, models, text_column=text_column, fanout=fanout,
                         prompt_template=prompt_template, json_keys=json_keys, json_schema=json_schema,
                         id_column=id_column, column_prefix=column_prefix)

        def describe(runner: TableRunner, facts: dict[str, Any]) -> ManifestRecorder:
            recorder = analysis_manifest(runner, facts, manifest_path(output), text_column=text_column,
                                         output=str(output), argv=argv)
            recorder.job.update(local=bool(job.local_model), id_column=id_column,
                                column_prefix=column_prefix, encoding=encoding)
            return recorder

        report = await run_table_file(
            input, output, build=build, describe=describe, where=Where(job), required=[text_column, id_column or ""],
            per_row=len(models) if fanout else 1, store=store, chunk_size=chunk_size,
            neutralize_formulas=neutralize_formulas, max_concurrent_calls=max_concurrent_calls,
            max_json_retries=max_json_retries, progress=progress_mode(progress), argv=argv,
            encoding=encoding)
    runner = report.runner
    keys = getattr(runner.plan, "keys", None) if runner is not None else None
    recorder = report.recorder
    if fanout and keys and len(models) > 1 and report.written and runner is not None and recorder:
        report.agreement = save_agreement(recorder, read_table(output), runner)
        report.agreement_error = (recorder.data.get("agreement") or {}).get("error")
    return report


@checked_keywords(analyze_file_async)
def analyze_file(input: str | os.PathLike[str], output: str | os.PathLike[str], **kwargs: Any) -> TableFileReport:
    """Run one prompt over every row of a table file and write the table with its answers:
    `corral analyze` from Python, with `run_analysis`'s keywords.

    The input is read in chunks of ``chunk_size`` rows (CSV, TSV, Parquet, JSONL, Excel) and the
    output (by its extension) written chunk by chunk; memory does not grow with the file. The output
    appears only when complete. The journal beside it (``<output>.corral.db``, or ``store=``) makes a
    second call resume: rows already answered are not sent again. ``local=True`` (or
    ``servers="local"``) runs the embedded llama.cpp model; ``encoding="cp1252"`` (or latin-1,
    utf-16...) reads a CSV or TSV that is not UTF-8. Returns a `TableFileReport` (rows written,
    counts, rows not sent, and after a fan-out with ``json_keys`` the models' agreement).

    >>> corral.analyze_file("speeches.csv", "labelled.parquet", model_names=["llama3.2", "mistral"],
    ...                     json_keys=["label"], fanout=True, temperature=0)
    """
    return run_sync(analyze_file_async(input, output, **kwargs))
