"""`corral analyze` and `corral fill`: table files through run_analysis / fill, streamed."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..errors import UsageError
from . import app
from .common import (
    API_KEY_ENV_HELP,
    RPM_HELP,
    TPM_HELP,
    keyed,
    load_schema,
    model_options,
    read_text_arg,
    setup_logging,
)
from .run import _run_interruptibly


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


@app.command("analyze")
def analyze_command(
    input: str = typer.Argument(..., help="Table: CSV, TSV, Parquet, JSONL or Excel."),
    output: str = typer.Option(..., "-o", "--output", help="Output table (.csv, .parquet, .jsonl)."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the text."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Template with {text} / {column} (or @file)."),
    json_keys: Optional[str] = typer.Option(None, "--json-keys", help="Keys of the JSON answer: label,prob"),
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
    workers: int = typer.Option(3, "--workers", "-j", help="Requests in flight per server."),
    max_concurrent_calls: Optional[int] = typer.Option(None, "--max-concurrent-calls",
                                                      help="Cap on requests in flight over all servers."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="NAME=VALUE",
                                     help="Model option, e.g. -O top_p=0.9 (repeatable)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="Sampling temperature (0 = greedy)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Sampling seed, for repeatable answers."),
    num_ctx: Optional[int] = typer.Option(None, "--num-ctx", help="Context window in tokens (Ollama's num_ctx)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--num-predict",
                                             help="Most tokens per answer."),
    id_column: Optional[str] = typer.Option(None, "--id-column",
        help="Column of row ids for the journal [default: the row number]."),
    chunk_size: int = typer.Option(20_000, "--chunk-size", help="Rows read (and written) at a time."),
    json_retries: int = typer.Option(2, "--json-retries", help="Re-asks when the answer is not valid JSON."),
    store: Optional[str] = typer.Option(None, "--store", help="Journal [<output>.corral.db]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per request attempt."),
    keep_formulas: bool = typer.Option(False, "--keep-formulas", help="Do not neutralise =,+,-,@ cells in CSV."),
    column_prefix: str = typer.Option("", "--column-prefix",
        help="Put this before every new column's name (when the table has columns of those names)."),
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

    setup_logging(verbose)
    err = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120)
    report = _run_interruptibly(analyze_file_async(
        input, output, text_column=text_column, model_names=_split(models),
        prompt_template=read_text_arg(prompt, "--prompt"), json_keys=_split(json_keys) or None,
        json_schema=load_schema(schema) if schema else None, fanout=fanout,
        system=read_text_arg(system, "--system"), servers=keyed(server, api, api_key_env, rpm, tpm),
        config=config, api=api,
        local=local, workers=workers, max_concurrent_calls=max_concurrent_calls, id_column=id_column,
        chunk_size=chunk_size, max_json_retries=json_retries, store=store, timeout=timeout,
        neutralize_formulas=not keep_formulas, progress=progress, argv=sys.argv, column_prefix=column_prefix,
        **model_options(option, temperature, seed, num_ctx, max_tokens),
    ), str(store or default_store_path(output, None)))
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
    if stats.failed:
        raise typer.Exit(1)


@app.command("fill")
def fill_command(
    input: str = typer.Argument(..., help="Table: CSV, TSV, Parquet, JSONL or Excel."),
    output: str = typer.Option(..., "-o", "--output", "--output_csv", help="Output table."),
    fields: str = typer.Option(..., "--fields", "--json_fields", help="Fields to fill: Occasion,City"),
    title_col: str = typer.Option("title_en", "--title-col", "--text-column", help="Column with the text."),
    col_map: Optional[str] = typer.Option(None, "--col-map", help="FIELD=COLUMN,...: fill these columns' gaps."),
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
    workers: int = typer.Option(3, "--workers", "-j", help="Requests in flight per server."),
    max_concurrent_calls: Optional[int] = typer.Option(None, "--max-concurrent-calls",
                                                      help="Cap on requests in flight over all servers."),
    chunk_size: int = typer.Option(20_000, "--chunk-size", "--chunk_size", help="Rows read (and written) at a time."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="NAME=VALUE",
                                     help="Model option, e.g. -O top_p=0.9 (repeatable)."),
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
    from ..tables.fill import fill_file_async

    setup_logging(verbose)
    written, stats = _run_interruptibly(fill_file_async(
        input, output, chunk_size=chunk_size, title_col=title_col, json_fields=tuple(_split(fields)),
        col_map=_col_map(col_map) or None, model_names=_split(models), fanout=fanout, workers=workers,
        max_concurrent_calls=max_concurrent_calls, prompt_template=read_text_arg(prompt, "--prompt"),
        system=read_text_arg(system, "--system"), servers=keyed(server, api, api_key_env, rpm, tpm),
        config=config, api=api,
        store=store, max_json_retries=json_retries, timeout=timeout, progress=progress,
        neutralize_formulas=not keep_formulas, argv=sys.argv, local=local, column_prefix=column_prefix,
        **model_options(option, temperature, seed, num_ctx, max_tokens),
    ), str(store or default_store_path(output, None)))
    print(f"corral: {written} rows written to {output} ({stats.ok} answers ok, {stats.failed} failed, "
          f"{stats.cached} from the store); manifest in {output}.manifest.json", file=sys.stderr)
    if stats.failed:
        raise typer.Exit(1)

