"""`corral analyze` and `corral fill`: table files through run_analysis / fill, streamed."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Optional

import typer

from ..errors import UsageError
from ..limits import CHUNK_ROWS
from . import app
from .common import (
    API_KEY_ENV_HELP,
    RPM_HELP,
    TPM_HELP,
    keyed,
    load_schema,
    model_options,
    parse_option_pairs,
    read_text_arg,
    setup_logging,
)
from .run import _run_interruptibly

if TYPE_CHECKING:
    from ..reproduce import Reproduction


def _split(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def _col_map(value: Optional[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in _split(value):
        if "=" not in pair:
            raise UsageError(f"--col-map {pair!r}: expected FIELD=COLUMN, e.g. Occasion=occ")
        field, column = pair.split("=", 1)
        mapping[field.strip()] = column.strip()
    return mapping


def _workers(value: Optional[int]) -> int:
    """``-j`` as given, else Ollama-run-async's default, which gives way to the config's slots."""
    from ..settings import DEFAULT_WORKERS

    return DEFAULT_WORKERS if value is None else value


@app.command("analyze")
def analyze_command(
    ctx: typer.Context,
    input: Optional[str] = typer.Argument(None, help="Table: CSV, TSV, Parquet, JSONL or Excel."),
    output: Optional[str] = typer.Option(None, "-o", "--output", "--output_csv",
                                         help="Output table (.csv, .parquet, .jsonl)."),
    text_column: str = typer.Option("text", "--text-column", "--text_column", help="Column holding the text."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Template with {text} / {column} (or @file)."),
    json_keys: Optional[str] = typer.Option(
        None, "--json-keys", "--json_keys", help="Keys of the JSON answer: label,prob; typed: "
        "label:str,prob:float (str, int, float, bool)."),
    schema: Optional[str] = typer.Option(None, "--schema", help="JSON Schema of the answer (inline or @file)."),
    models: str = typer.Option("llama3.2", "--models", "-m", help="Model(s), comma-separated."),
    fanout: bool = typer.Option(False, "--fanout", help="Every model answers every row."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (or @file)."),
    config: Optional[str] = typer.Option(None, "--config", "-c",
        help="TOML config (ollama-batch-cluster's or [[servers]])."),
    server: list[str] = typer.Option([], "--server", "-s", metavar="URL", help="Server URL; repeat for several."),
    api: str = typer.Option("ollama", "--api", help="Protocol of --server URLs: ollama or openai."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="NAME", help=API_KEY_ENV_HELP),
    rpm: Optional[int] = typer.Option(None, "--rpm", metavar="N", help=RPM_HELP),
    tpm: Optional[int] = typer.Option(None, "--tpm", metavar="N", help=TPM_HELP),
    local: bool = typer.Option(False, "--local", help="Use the embedded llama.cpp model."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", show_default=False,
        help="Requests at once on a server, never more [default: 3, or the config's max_concurrency]."),
    max_concurrent_calls: Optional[int] = typer.Option(None, "--max-concurrent-calls", "--max_concurrent_calls",
                                                      help="Cap on requests in flight over all servers."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="NAME=VALUE",
                                     help="Model option, e.g. -O top_p=0.9 (repeatable)."),
    extra_option: list[str] = typer.Option([], "--extra-option", metavar="NAME=VALUE",
        help="An option sent as it is, unchecked: one the server knows and corral does not (repeatable)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed, for repeatable answers."),
    num_ctx: Optional[int] = typer.Option(None, "--num-ctx", help="Context window in tokens (Ollama's num_ctx)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--num-predict",
                                             help="Most tokens per answer."),
    id_column: Optional[str] = typer.Option(None, "--id-column",
        help="Column of row ids for the journal [default: the row number]."),
    chunk_size: int = typer.Option(CHUNK_ROWS, "--chunk-size", "--chunk_size",
                                   help="Rows read (and written) at a time."),
    json_retries: int = typer.Option(2, "--json-retries", help="Re-asks when the answer is not valid JSON."),
    store: Optional[str] = typer.Option(None, "--store", help="Journal [<output>.corral.db]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per request attempt."),
    keep_formulas: bool = typer.Option(False, "--keep-formulas", help="Do not neutralise =,+,-,@ cells in CSV."),
    column_prefix: str = typer.Option("", "--column-prefix",
        help="Put this before every new column's name (when the table has columns of those names)."),
    encoding: Optional[str] = typer.Option(
        None, "--encoding", help="Encoding of a CSV or TSV input that is not UTF-8: cp1252, latin-1, utf-16..."),
    reproduce: Optional[str] = typer.Option(
        None, "--reproduce", help="Re-run the job of a manifest (out.csv.manifest.json) into a fresh output "
        "and report models whose digest changed and answers that differ."),
    progress: str = typer.Option("auto", "--progress", help="auto, bar, log or none."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr (-vv: debug)."),
) -> None:
    """Run one prompt over every row of a table; split across models or fanned out.

    The answers become new columns of the output table (one per JSON key with --json-keys or
    --schema); with --fanout and several models it also prints how much the models agree.

    \b
    Example:
      corral analyze reviews.csv -o labelled.csv --prompt 'Sentiment of: {text}' -m llama3.2
      corral analyze reviews.parquet -o out.parquet --json-keys label,prob -m llama3.2,gemma3 --fanout
    """
    from rich.console import Console

    from ..jobs import default_store_path
    from ..tables.analysis import analyze_file_async
    from ..tables.reproduce import ANALYZE_JOB_FLAGS, analyze_arguments

    setup_logging(verbose)
    err = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120)
    job = dict(
        text_column=text_column, model_names=_split(models), prompt_template=read_text_arg(prompt, "--prompt"),
        json_keys=_split(json_keys) or None, json_schema=load_schema(schema) if schema else None,
        fanout=fanout, system=read_text_arg(system, "--system"), servers=keyed(server, api, api_key_env, rpm, tpm),
        local=local, id_column=id_column, column_prefix=column_prefix, encoding=encoding,
        max_json_retries=json_retries, timeout=timeout, max_concurrent_calls=max_concurrent_calls,
        **model_options(option, temperature, seed, num_ctx, max_tokens))
    repro = None
    if reproduce:
        repro = _reproduction(ctx, reproduce, "analyze", ANALYZE_JOB_FLAGS)
        job.update(analyze_arguments(repro, servers_given=bool(server or config or local)))
        job.update(_engine_flags_given(ctx, timeout=timeout, json_retries=json_retries,
                                       max_concurrent_calls=max_concurrent_calls))
        input, output = str(repro.input_path), output or repro.default_output()
    input, output = _input_and_output(input, output)
    journal = str(store or default_store_path(output, None))
    if repro is not None:
        _warn_if_resuming(journal)
    report = _run_interruptibly(analyze_file_async(
        input, output, config=config, api=api, workers=_workers(workers), chunk_size=chunk_size, store=store,
        neutralize_formulas=not keep_formulas, progress=progress, argv=sys.argv,
        extra_options=parse_option_pairs(extra_option, "--extra-option"), **job,
    ), journal)
    if report.skipped_count:
        err.print(f"corral: {report.skipped_count} row(s) not sent: {'; '.join(report.skipped[:5])}",
                  highlight=False, markup=False)
    stats = report.stats
    err.print(f"corral: {report.written} rows written to {output} ({stats.ok} answers ok, "
              f"{stats.failed} failed, {stats.cached} from the store)", highlight=False)
    if report.agreement_error:
        err.print(f"corral: no agreement table: {report.agreement_error}", highlight=False, markup=False)
    elif report.agreement is not None:
        err.print(report.agreement.render())
    err.print(f"corral: manifest in {report.manifest}", highlight=False)
    if repro is not None:
        _compare(repro, reproduce, report.manifest, journal)
    if stats.failed:
        raise typer.Exit(1)


@app.command("fill")
def fill_command(
    ctx: typer.Context,
    input: Optional[str] = typer.Argument(None, help="Table: CSV, TSV, Parquet, JSONL or Excel."),
    output: Optional[str] = typer.Option(None, "-o", "--output", "--output_csv", help="Output table."),
    fields: Optional[str] = typer.Option(None, "--fields", "--json_fields",
                                         help="Fields to fill: Occasion,City; typed: City,Year:int"),
    title_col: str = typer.Option("title_en", "--title-col", "--text-column", "--title_col",
                                  help="Column with the text."),
    col_map: Optional[str] = typer.Option(None, "--col-map", "--col_map",
                                          help="FIELD=COLUMN,...: fill these columns' gaps."),
    models: str = typer.Option("llama3.2", "--models", "-m", help="Model(s), comma-separated."),
    fanout: bool = typer.Option(False, "--fanout", help="Every model answers every row."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Template with {text} and {fields} (or @file)."),
    system: Optional[str] = typer.Option(None, "--system", help="System message (or @file)."),
    config: Optional[str] = typer.Option(None, "--config", "-c",
        help="TOML config (ollama-batch-cluster's or [[servers]])."),
    server: list[str] = typer.Option([], "--server", "-s", metavar="URL", help="Server URL; repeat for several."),
    api: str = typer.Option("ollama", "--api", help="Protocol of --server URLs: ollama or openai."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="NAME", help=API_KEY_ENV_HELP),
    rpm: Optional[int] = typer.Option(None, "--rpm", metavar="N", help=RPM_HELP),
    tpm: Optional[int] = typer.Option(None, "--tpm", metavar="N", help=TPM_HELP),
    local: bool = typer.Option(False, "--local", help="Use the embedded llama.cpp model."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", show_default=False,
        help="Requests at once on a server, never more [default: 3, or the config's max_concurrency]."),
    max_concurrent_calls: Optional[int] = typer.Option(None, "--max-concurrent-calls", "--max_concurrent_calls",
                                                      help="Cap on requests in flight over all servers."),
    chunk_size: int = typer.Option(CHUNK_ROWS, "--chunk-size", "--chunk_size",
                                   help="Rows read (and written) at a time."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "--batch_size", hidden=True,
        help="Ollama-run-async's prompts per worker: accepted, unneeded (corral's slots do this)."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="NAME=VALUE",
                                     help="Model option, e.g. -O top_p=0.9 (repeatable)."),
    extra_option: list[str] = typer.Option([], "--extra-option", metavar="NAME=VALUE",
        help="An option sent as it is, unchecked: one the server knows and corral does not (repeatable)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed, for repeatable answers."),
    num_ctx: Optional[int] = typer.Option(None, "--num-ctx", help="Context window in tokens (Ollama's num_ctx)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--num-predict",
                                             help="Most tokens per answer."),
    json_retries: int = typer.Option(2, "--json-retries", help="Re-asks when the answer is not valid JSON."),
    store: Optional[str] = typer.Option(None, "--store", help="Journal [<output>.corral.db]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per request attempt."),
    keep_formulas: bool = typer.Option(False, "--keep-formulas", help="Do not neutralise =,+,-,@ cells in CSV."),
    column_prefix: str = typer.Option("", "--column-prefix",
        help="Put this before every new column's name (when the table has columns of those names)."),
    encoding: Optional[str] = typer.Option(
        None, "--encoding", help="Encoding of a CSV or TSV input that is not UTF-8: cp1252, latin-1, utf-16..."),
    reproduce: Optional[str] = typer.Option(
        None, "--reproduce", help="Re-run the job of a manifest (out.csv.manifest.json) into a fresh output "
        "and report models whose digest changed and answers that differ."),
    progress: str = typer.Option("auto", "--progress", help="auto, bar, log or none."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr (-vv: debug)."),
) -> None:
    """Ask the model only for the fields each row is missing; never overwrite existing values.

    \b
    Example:
      corral fill events.csv -o filled.csv --fields City,Occasion --text-column title -m llama3.2
      corral fill events.csv -o filled.csv --fields City --col-map City=city_name -s http://127.0.0.1:11434
    """
    from ..jobs import default_store_path
    from ..manifest import manifest_path
    from ..tables.fill import fill_file_async
    from ..tables.reproduce import FILL_JOB_FLAGS, fill_arguments

    setup_logging(verbose)
    del batch_size  # Ollama-run-async's knob: corral's slots keep every server busy without it
    job = dict(
        title_col=title_col, json_fields=tuple(_split(fields)), col_map=_col_map(col_map) or None,
        model_names=_split(models), fanout=fanout, max_concurrent_calls=max_concurrent_calls,
        prompt_template=read_text_arg(prompt, "--prompt"), system=read_text_arg(system, "--system"),
        servers=keyed(server, api, api_key_env, rpm, tpm), max_json_retries=json_retries, timeout=timeout,
        local=local, column_prefix=column_prefix, encoding=encoding,
        **model_options(option, temperature, seed, num_ctx, max_tokens))
    repro = None
    if reproduce:
        repro = _reproduction(ctx, reproduce, "fill", FILL_JOB_FLAGS)
        job.update(fill_arguments(repro, servers_given=bool(server or config or local)))
        job.update(_engine_flags_given(ctx, timeout=timeout, json_retries=json_retries,
                                       max_concurrent_calls=max_concurrent_calls))
        input, output = str(repro.input_path), output or repro.default_output()
    elif not fields:
        raise UsageError("no fields to fill: give --fields Occasion,City")
    input, output = _input_and_output(input, output)
    journal = str(store or default_store_path(output, None))
    if repro is not None:
        _warn_if_resuming(journal)
    written, stats = _run_interruptibly(fill_file_async(
        input, output, chunk_size=chunk_size, workers=_workers(workers), config=config, api=api, store=store,
        progress=progress, neutralize_formulas=not keep_formulas, argv=sys.argv,
        extra_options=parse_option_pairs(extra_option, "--extra-option"), **job,
    ), journal)
    print(f"corral: {written} rows written to {output} ({stats.ok} answers ok, {stats.failed} failed, "
          f"{stats.cached} from the store); manifest in {output}.manifest.json", file=sys.stderr)
    if repro is not None:
        _compare(repro, reproduce, manifest_path(output), journal)
    if stats.failed:
        raise typer.Exit(1)


def _input_and_output(input: Optional[str], output: Optional[str]) -> tuple[str, str]:
    """Both are needed unless --reproduce gives them."""
    if not input:
        raise UsageError("no input table: give INPUT (or --reproduce MANIFEST)")
    if not output:
        raise UsageError("no output: give -o OUTPUT")
    return input, output


def _reproduction(ctx: typer.Context, manifest: str, kind: str, job_flags: tuple[str, ...]) -> Reproduction:
    """The manifest's job, refusing the flags that would change it (the run would then be another)."""
    from ..reproduce import command_line, prepare

    given = [_flag(ctx, name) for name in job_flags if _given(ctx, name)]
    if given:
        raise UsageError(f"--reproduce takes the job from the manifest; drop {', '.join(given)}")
    repro = prepare(manifest, kind)
    print(f"corral: reproducing: {command_line(repro.manifest)}", file=sys.stderr)
    for message in repro.warnings:
        print(f"corral: warning: {message}", file=sys.stderr)
    return repro


def _warn_if_resuming(journal: str) -> None:
    """A reproduction into a journal that has answers would resume, not send: say so."""
    from pathlib import Path

    if Path(journal).exists():
        print(f"corral: warning: {journal} exists (an earlier re-run?): rows it holds are not sent again; "
              "give -o NEW.csv for a fresh re-run", file=sys.stderr)


def _given(ctx: typer.Context, name: str) -> bool:
    """Was this parameter typed on the command line (not left at its default)?"""
    return getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"


def _engine_flags_given(ctx: typer.Context, **values: Any) -> dict[str, Any]:
    """How to run (not what to ask) may change in a reproduction: the flags given win over the
    manifest's engine settings, as in `corral run --reproduce`."""
    keyword = {"json_retries": "max_json_retries"}
    return {keyword.get(name, name): value for name, value in values.items() if _given(ctx, name)}


def _flag(ctx: typer.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name:
            return "INPUT" if param.param_type_name == "argument" else max(param.opts, key=len)
    return name


def _compare(repro: Reproduction, reproduces: Optional[str], manifest: Any, journal: str) -> None:
    """The re-run against the original: printed, and kept in the new manifest."""
    from ..manifest import load_manifest
    from ..reproduce import compare, record_reproduction

    if manifest is None:
        return
    comparison = compare(repro, load_manifest(manifest), journal)
    record_reproduction(manifest, str(reproduces), comparison)
    for line in comparison.lines() or ["nothing to compare: the original store is not here"]:
        print(f"corral: reproduce: {line}", file=sys.stderr)
