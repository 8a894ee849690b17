"""Fill only what is missing: Ollama-run-async's `fill_missing_fields_from_csv`, streamed and resumable.

For each row, the fields whose cells are empty are asked for, and only those: a row with nothing
missing is never sent. Existing values are never overwritten. Answers go to ``computed_<key>``, or
into the ``col_map`` column's empty cells, or to ``computed_<key>_<model>`` in fan-out.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pandas as pd

from ..engine import JobStats
from ..errors import UsageError
from ..limits import CHUNK_ROWS
from ..manifest import ManifestRecorder, manifest_path
from ..options import checked_keywords
from ..runtime import run_sync
from ..settings import DEFAULT_WORKERS, LOCAL_PARALLEL, ConfigLike, Settings, resolve
from ..store import Store
from .answer_types import JsonKeys, is_typed, json_types, nullable, typed_column, typed_schema
from .answers import check_keys
from .job import RunnerFactory, Where, like_input, model_list, progress_mode, run_table_file, run_table_frame
from .prompts import PromptTemplate, is_missing
from .provenance import table_job
from .runner import RowPlan, RowResult, TableRunner, parse_outcome, refuse_clashes

log = logging.getLogger("corral")

DEFAULT_FILL_PROMPT = (
    "Extract these fields from the text: {fields}. Answer with one JSON object with exactly these "
    "keys; use null for a field the text does not give.\n\nText:\n{text}"
)


class FillPlan:
    """Per row: which fields are missing, and the prompt asking for exactly those."""

    def __init__(self, columns: list[str], title_col: str, json_fields: JsonKeys,
                 col_map: dict[str, str] | None, prompt_template: str | None) -> None:
        if title_col not in columns:
            raise UsageError(f"text column {title_col!r} is not in the table; columns are: "
                             f"{', '.join(map(str, columns))}")
        self.title_col = title_col
        self.fields, self.specs, self.defs = fill_fields(json_fields)
        self.types = json_types({"properties": self.specs})
        self.col_map = dict(col_map or {})
        unknown = sorted(set(self.col_map) - set(self.fields))
        if unknown:
            raise UsageError(f"col_map names {', '.join(unknown)}, which are not among the fields "
                             f"{', '.join(self.fields)}")
        # Where a field's existing value lives: its col_map column, else a column of its own name.
        self.source = {f: self.col_map.get(f, f if f in columns else None) for f in self.fields}
        template = prompt_template or DEFAULT_FILL_PROMPT
        self.template = PromptTemplate(template.replace("{fields}", "\x00fields\x00"), title_col,
                                       [str(c) for c in columns])
        self._schemas: dict[tuple[str, ...], dict[str, Any]] = {}
        #: The columns a row's plan reads: only these are taken out of each chunk.
        self.reads = [title_col, *self.template.columns(),
                      *(column for column in self.source.values() if column is not None)]

    def fields_schema(self) -> dict[str, Any] | None:
        """The fields with their types, for the manifest (None when every field is plain text)."""
        if not any(self.specs.values()):
            return None
        return {"type": "object", "properties": self.specs, "required": list(self.fields),
                **({"$defs": self.defs} if self.defs else {})}

    def missing(self, row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(f for f in self.fields
                     if (column := self.source[f]) is None or is_missing(row.get(column)))

    def __call__(self, row: dict[str, Any]) -> RowPlan | str:
        wanted = self.missing(row)
        if not wanted:
            return "nothing missing"
        if is_missing(row.get(self.title_col)):
            return "empty text"
        prompt = self.template.render(row).replace("\x00fields\x00", ", ".join(wanted))
        schema = self._schemas.get(wanted)
        if schema is None:  # one schema object per combination of missing fields, shared by rows
            schema = self._schemas[wanted] = {
                "type": "object", "properties": {f: nullable(self.specs[f]) for f in wanted},
                "required": list(wanted), **({"$defs": self.defs} if self.defs else {})}
        return RowPlan(prompt=prompt, keys=wanted, schema=schema)


def fill_fields(json_fields: JsonKeys) -> tuple[tuple[str, ...], dict[str, dict[str, Any]], dict[str, Any]]:
    """(fields, each field's JSON Schema, the definitions they refer to) from names, or names with
    types (``{"year": int}``, ``"City,year:int"``, a pydantic class, a JSON Schema); an untyped
    field is text."""
    if is_typed(json_fields):
        schema, _ = typed_schema(json_fields, "json_fields")
        specs = {str(k): dict(v) if isinstance(v, dict) else {} for k, v in schema["properties"].items()}
        return check_keys(tuple(specs), "json_fields"), specs, dict(schema.get("$defs") or {})
    names: list[Any] = json_fields.split(",") if isinstance(json_fields, str) else list(json_fields or ())  # type: ignore[arg-type]
    fields = check_keys(tuple(str(n).strip() for n in names if str(n).strip()), "json_fields")
    return fields, {f: {} for f in fields}, {}


def fill_column_names(plan: FillPlan, models: tuple[str, ...], fanout: bool, prefix: str = "") -> list[str]:
    """The columns a fill adds (``col_map`` targets are filled in place, gaps only, so not these)."""
    names: list[str] = []
    for suffix in ([f"_{m}" for m in models] if fanout else [""]):
        names += [f"{prefix}computed_{f}{suffix}" for f in plan.fields
                  if fanout or not plan.col_map.get(f)]
        names.append(f"{prefix}fill_error{suffix}")
    if not fanout:
        names.append(f"{prefix}fill_model")
    return names


def fill_columns(frame: pd.DataFrame, results: list[RowResult], plan: FillPlan,
                 models: tuple[str, ...], fanout: bool, prefix: str = "") -> pd.DataFrame:
    """The chunk with its answers placed; an existing value is never replaced."""
    out = frame.copy()
    names = models if fanout else ("*",)
    for name in names:
        suffix = f"_{name}" if fanout else ""
        values: dict[str, list[Any]] = {f: [] for f in plan.fields}
        errors: list[Any] = []
        answered_by: list[Any] = []
        for result in results:
            answer = result.answer(name)
            parsed, error, _ = parse_outcome(answer, result.plan)
            if result.skipped and result.skipped != "nothing missing":
                error = f"not sent: {result.skipped}"
            errors.append(error)
            answered_by.append(answer.model if answer else None)
            asked = result.plan.keys if result.plan else ()
            for field in plan.fields:
                values[field].append(parsed.get(field) if field in (asked or ()) and error is None else None)
        for field in plan.fields:
            target = plan.col_map.get(field) if not fanout else None
            if target:
                column = out[target] if target in out.columns else pd.Series([None] * len(out), dtype=object)
                column = column.astype(object)
                fills = pd.Series(values[field], index=out.index, dtype=object)
                empty = column.map(is_missing)
                out[target] = column.where(~empty, fills)
            else:
                out[f"{prefix}computed_{field}{suffix}"] = typed_column(values[field], plan.types.get(field))
        out[f"{prefix}fill_error{suffix}"] = errors
        if not fanout:
            out[f"{prefix}fill_model"] = answered_by
    return out


def _runner(columns: list[str], emit: Any, *, title_col: str, json_fields: JsonKeys,
            col_map: dict[str, str] | None, models: tuple[str, ...], fanout: bool,
            prompt_template: str | None, system: str | None, options: dict[str, Any],
            column_prefix: str = "") -> tuple[TableRunner, FillPlan]:
    plan = FillPlan(columns, title_col, json_fields, col_map, prompt_template)
    refuse_clashes([str(c) for c in columns], fill_column_names(plan, models, fanout, column_prefix),
                   option="--column-prefix (column_prefix= in Python)", example="--column-prefix run2_")
    runner = TableRunner(
        models=models, fanout=fanout, system=system, options=options, plan=plan,
        finish=lambda frame, results: fill_columns(frame, results, plan, models, fanout, column_prefix),
        emit=emit,
    )
    return runner, plan


def fill_manifest(runner: TableRunner, plan: FillPlan, prompt_template: str | None,
                  input_facts: dict[str, Any], path: str | os.PathLike[str] | None, *,
                  kind: str, output: str | None = None, argv: list[str] | None = None) -> ManifestRecorder:
    """The manifest of a fill run: the fields asked for, where answers go, the template as sent."""
    job = table_job(runner, prompt_template or DEFAULT_FILL_PROMPT, text_column=plan.title_col,
                    json_fields=list(plan.fields), col_map=plan.col_map or None,
                    fields_schema=plan.fields_schema())
    return ManifestRecorder(kind=kind, job=job, input=input_facts, argv=argv, output={"path": output},
                            path=Path(path) if path is not None else None)


@checked_keywords()
async def fill_missing_fields_async(
    df: Any, title_col: str = "title_en",
    json_fields: JsonKeys = ("Occasion", "Institution", "City"),
    col_map: dict[str, str] | None = None, model_names: str | Sequence[str] = "llama3.2",
    fanout: bool = False, workers: int | None = DEFAULT_WORKERS, *, max_concurrent_calls: int | None = None,
    prompt_template: str | None = None, system: str | None = None, servers: Any = None,
    local: bool = False, config: ConfigLike | None = None, api: str = "ollama",
    store: str | os.PathLike[str] | Store | None = None,
    max_json_retries: int = 2, timeout: float | None = None, progress: bool | str = True,
    chunk_size: int = CHUNK_ROWS, manifest: str | os.PathLike[str] | None = None, column_prefix: str = "",
    extra_options: dict[str, Any] | None = None, **options: Any,
) -> Any:
    """The async twin of `fill_missing_fields`."""
    with ExitStack() as stack:
        job = resolve(servers=servers, config=config, api=api, local=local, stack=stack,
                      local_parallel=workers or LOCAL_PARALLEL, workers=workers, system=system,
                      options=options, extra_options=extra_options, timeout=timeout)
        models = (job.local_model,) if job.local_model else model_list(model_names)
        return await _fill_frame(df, job, models, title_col=title_col, json_fields=json_fields,
                                 col_map=col_map, fanout=fanout, prompt_template=prompt_template,
                                 column_prefix=column_prefix, store=store, chunk_size=chunk_size,
                                 max_concurrent_calls=max_concurrent_calls,
                                 max_json_retries=max_json_retries, progress=progress, manifest=manifest)


async def _fill_frame(df: Any, job: Settings, models: tuple[str, ...], *, title_col: str,
                      json_fields: JsonKeys, col_map: dict[str, str] | None, fanout: bool,
                      prompt_template: str | None, column_prefix: str,
                      store: str | os.PathLike[str] | Store | None, chunk_size: int,
                      max_concurrent_calls: int | None, max_json_retries: int, progress: bool | str,
                      manifest: str | os.PathLike[str] | None) -> Any:
    """A DataFrame through the table loop with the job's settings; the new frame, like the input."""
    build, plans = _builder(job, models, title_col=title_col, json_fields=json_fields, col_map=col_map,
                            fanout=fanout, prompt_template=prompt_template, column_prefix=column_prefix)

    def describe(runner: TableRunner, facts: dict[str, Any]) -> ManifestRecorder:
        return fill_manifest(runner, plans[0], prompt_template, facts, manifest, kind="fill_missing_fields")

    def empty(frame: pd.DataFrame, runner: TableRunner) -> pd.DataFrame:
        return runner.finish(frame, [])

    out, _, _ = await run_table_frame(
        df, build=build, describe=describe, where=Where(job), per_row=0, store=store, chunk_size=chunk_size,
        max_concurrent_calls=max_concurrent_calls, max_json_retries=max_json_retries,
        progress=progress_mode(progress), empty=empty)
    return like_input(df, out)


def _builder(job: Settings, models: tuple[str, ...], *, title_col: str, json_fields: JsonKeys,
             col_map: dict[str, str] | None, fanout: bool,
             prompt_template: str | None, column_prefix: str = "") -> tuple[RunnerFactory, list[FillPlan]]:
    """The fill runner for a table with the given columns, and the plan it made (once built)."""
    plans: list[FillPlan] = []

    def build(columns: list[str], emit: Any) -> TableRunner:
        runner, plan = _runner(columns, emit, title_col=title_col, json_fields=json_fields, col_map=col_map,
                               models=models, fanout=fanout, prompt_template=prompt_template,
                               system=job.system, options=job.options, column_prefix=column_prefix)
        plans.append(plan)
        return runner

    return build, plans


@checked_keywords(fill_missing_fields_async)
def fill_missing_fields(df: Any, title_col: str = "title_en",
                        json_fields: JsonKeys = ("Occasion", "Institution", "City"),
                        col_map: dict[str, str] | None = None,
                        model_names: str | Sequence[str] = "llama3.2", fanout: bool = False,
                        workers: int | None = DEFAULT_WORKERS, **kwargs: Any) -> Any:
    """Ask only for the fields each row lacks; return a new DataFrame (pandas or polars, as given).

    New columns (``computed_<field>``, ``fill_error``, ``fill_model``) never replace the table's
    own: a clash is refused before anything is sent; ``column_prefix="run2_"`` renames them.

    ``workers`` is the number of calls at once on a server, never exceeded (left at its default, a
    server's own ``max_concurrency`` in the config wins; None: learnt);
    ``local=True`` (or ``servers="local"``) asks the embedded llama.cpp model. Model options by
    Ollama's names as keywords (``temperature=0``; a misspelt one is an error with a did-you-mean;
    ``extra_options={...}`` for options corral does not know).
    ``manifest="fill.manifest.json"`` also writes the run's manifest there (the store keeps it anyway)."""
    return run_sync(fill_missing_fields_async(df, title_col, json_fields, col_map, model_names, fanout,
                                              workers, **kwargs))


@checked_keywords()
async def fill_file_async(
    input_path: str | os.PathLike[str], output_path: str | os.PathLike[str], *, chunk_size: int = CHUNK_ROWS,
    title_col: str = "title_en", json_fields: JsonKeys = ("Occasion", "Institution", "City"),
    col_map: dict[str, str] | None = None, model_names: str | Sequence[str] = "llama3.2",
    fanout: bool = False, workers: int | None = DEFAULT_WORKERS, max_concurrent_calls: int | None = None,
    prompt_template: str | None = None, system: str | None = None, servers: Any = None,
    config: ConfigLike | None = None, api: str = "ollama",
    store: str | os.PathLike[str] | Store | None = None, max_json_retries: int = 2,
    timeout: float | None = None, progress: bool | str = "auto", neutralize_formulas: bool = True,
    argv: list[str] | None = None, local: bool = False, column_prefix: str = "", encoding: str | None = None,
    extra_options: dict[str, Any] | None = None, **options: Any,
) -> tuple[int, JobStats]:
    """Stream a table file through the fill job, writing the output chunk by chunk, and its manifest
    beside it (``<output>.manifest.json``); ``encoding`` reads a CSV or TSV that is not UTF-8."""
    with ExitStack() as stack:
        job = resolve(servers=servers, config=config, api=api, local=local, stack=stack,
                      local_parallel=workers or LOCAL_PARALLEL, workers=workers, system=system,
                      options=options, extra_options=extra_options, timeout=timeout)
        models = (job.local_model,) if job.local_model else model_list(model_names)
        build, plans = _builder(job, models, title_col=title_col, json_fields=json_fields,
                                col_map=col_map, fanout=fanout, prompt_template=prompt_template,
                                column_prefix=column_prefix)

        def describe(runner: TableRunner, facts: dict[str, Any]) -> ManifestRecorder:
            recorder = fill_manifest(runner, plans[0], prompt_template, facts,
                                     manifest_path(str(output_path)), kind="fill",
                                     output=str(output_path), argv=argv)
            recorder.job.update(local=bool(job.local_model), column_prefix=column_prefix, encoding=encoding)
            return recorder

        report = await run_table_file(
            input_path, output_path, build=build, describe=describe, where=Where(job), required=[title_col],
            per_row=0, store=store, chunk_size=chunk_size,  # rows with nothing missing are not sent
            neutralize_formulas=neutralize_formulas, max_concurrent_calls=max_concurrent_calls,
            max_json_retries=max_json_retries, progress=progress_mode(progress), argv=argv,
            encoding=encoding)
    return report.written, report.stats


@checked_keywords(fill_file_async)
def fill_missing_fields_from_csv(
    input_csv: str, output_csv: str = "out.csv", chunk_size: int = 20_000,  # Ollama-run-async's default
    workers: int | None = DEFAULT_WORKERS,
    batch_size: int = 4, title_col: str = "title_en",
    json_fields: JsonKeys = ("Occasion", "Institution", "City"),
    col_map: dict[str, str] | None = None, model_names: str | Sequence[str] = "llama3.2",
    fanout: bool = False, **kwargs: Any,
) -> None:
    """Ollama-run-async's function: stream ``input_csv`` in chunks and write ``output_csv`` (any table format
    by extension). ``workers`` is the number of calls at once on a server, never exceeded.
    ``batch_size`` is accepted for compatibility; corral's slots make it unnecessary. Re-running
    resumes from the journal beside the output (``<output>.corral.db``). Keywords as
    `fill_missing_fields`, ``local=True`` (or ``servers="local"``) included."""
    del batch_size
    kwargs.setdefault("progress", "auto")
    run_sync(fill_file_async(input_csv, output_csv, chunk_size=chunk_size, workers=workers,
                             title_col=title_col, json_fields=json_fields, col_map=col_map,
                             model_names=model_names, fanout=fanout, **kwargs))
