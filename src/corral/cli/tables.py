"""`corral analyze` and `corral fill`: table files through run_analysis / fill, streamed."""

from __future__ import annotations

import sys
from contextlib import ExitStack
from typing import Any, Optional

import typer
from rich.console import Console

from ..errors import UsageError
from . import app
from ..jobs import default_store_path
from .common import load_schema, parse_option_pairs, read_text_arg, setup_logging, start_local
from .run import _run_interruptibly


def _servers(server: list[str], api: str, local: bool, config: Optional[str], workers: int,
             stack: ExitStack) -> tuple[Any, Optional[str]]:
    """Servers for a table job: --local, --server URLs, else the config / OLLAMA_HOST."""
    if local:
        spec = start_local(max(workers, 1), stack)
        return [spec], (spec.models or ("",))[0]
    return (server or None), None


def _options(option: list[str], temperature: Optional[float], seed: Optional[int],
             num_ctx: Optional[int], max_tokens: Optional[int]) -> dict[str, Any]:
    options = parse_option_pairs(option)
    for name, value in (("temperature", temperature), ("seed", seed), ("num_ctx", num_ctx),
                        ("num_predict", max_tokens)):
        if value is not None:
            options[name] = value
    return options


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
    config: Optional[str] = typer.Option(None, "--config", "-c"),
    server: list[str] = typer.Option([], "--server", "-s"),
    api: str = typer.Option("ollama", "--api"),
    local: bool = typer.Option(False, "--local", help="Use the embedded llama.cpp model."),
    workers: int = typer.Option(3, "--workers", "-j", help="Requests in flight per server."),
    max_concurrent_calls: Optional[int] = typer.Option(None, "--max-concurrent-calls"),
    option: list[str] = typer.Option([], "--option", "-O"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    num_ctx: Optional[int] = typer.Option(None, "--num-ctx"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--num-predict"),
    id_column: Optional[str] = typer.Option(None, "--id-column"),
    chunk_size: int = typer.Option(20_000, "--chunk-size"),
    json_retries: int = typer.Option(2, "--json-retries", help="Re-asks when the answer is not valid JSON."),
    store: Optional[str] = typer.Option(None, "--store", help="Journal [<output>.corral.db]."),
    timeout: Optional[float] = typer.Option(None, "--timeout"),
    keep_formulas: bool = typer.Option(False, "--keep-formulas", help="Do not neutralise =,+,-,@ cells in CSV."),
    progress: str = typer.Option("auto", "--progress"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Run one prompt over every row of a table; split across models or fanned out."""
    from ..manifest import file_facts, manifest_path
    from ..tables.analysis import analysis_manifest, build_runner
    from ..tables.execute import ServerChoice, execute, model_list, server_specs
    from ..sources.tables import count_rows
    from ..tables.stream import TableStream

    setup_logging(verbose)
    model_names = model_list(_split(models))
    answer_schema = load_schema(schema) if schema else None
    err = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120)
    with ExitStack() as stack:
        servers, local_model = _servers(server, api, local, config, workers, stack)
        if local_model:
            model_names = (local_model,)
        specs, cfg = server_specs(ServerChoice(servers, config, api), workers)
        table = TableStream(input, output, chunk_size=chunk_size, neutralize_formulas=not keep_formulas)
        complete = False
        try:
            table.require_columns([text_column, id_column or ""])
            runner = build_runner(
                table.columns, table.emit, text_column=text_column, models=model_names,
                fanout=fanout, prompt_template=read_text_arg(prompt, "--prompt"),
                json_keys=_split(json_keys) or None, json_schema=answer_schema,
                system=read_text_arg(system, "--system") or cfg.get("system"),
                options={**cfg.get("options", {}), **_options(option, temperature, seed, num_ctx, max_tokens)},
                id_column=id_column,
            )
            rows = count_rows(input)
            total = rows * (len(model_names) if fanout else 1) if rows else None
            recorder = analysis_manifest(runner, file_facts(input, rows), manifest_path(output),
                                         text_column=text_column, output=output, argv=sys.argv)
            recorder.job.update(local=local, id_column=id_column)
            stats = _run_interruptibly(execute(
                runner, table.chunks(), specs=specs,
                store=store or default_store_path(output, None), max_concurrent_calls=max_concurrent_calls,
                timeout=timeout or cfg.get("timeout"), max_json_retries=json_retries, progress=progress,
                total=total, argv=sys.argv, manifest=recorder, hedge=cfg.get("hedge") is not False,
            ), str(store or default_store_path(output, None)))
            complete = True
        finally:
            table.close(complete=complete)
    if runner.skipped_count:
        err.print(f"corral: {runner.skipped_count} row(s) not sent: {'; '.join(runner.skipped[:5])}",
                  highlight=False, markup=False)
    written = table.written
    err.print(f"corral: {written} rows written to {output} ({stats.ok} answers ok, {stats.failed} failed, "
              f"{stats.cached} from the store)", highlight=False)
    keys = runner.plan.keys  # type: ignore[attr-defined]
    if fanout and keys and len(model_names) > 1 and written:
        _print_agreement(output, runner, recorder, err)
    err.print(f"corral: manifest in {recorder.path}", highlight=False)
    if stats.failed:
        raise typer.Exit(1)


def _print_agreement(output: str, runner: Any, recorder: Any, err: Console) -> None:
    """After a fan-out run: how much the models agree on each categorical key (also kept in the
    manifest, for `corral report`)."""
    from ..tables.execute import save_agreement
    from ..sources.tables import read_table

    report = save_agreement(recorder, read_table(output), runner)
    problem = (recorder.data.get("agreement") or {}).get("error")
    if problem:
        err.print(f"corral: no agreement table: {problem}", highlight=False, markup=False)
    elif report is not None:
        err.print(report.render())


@app.command("fill")
def fill_command(
    input: str = typer.Argument(..., help="Table: CSV, TSV, Parquet, JSONL or Excel."),
    output: str = typer.Option(..., "-o", "--output", "--output_csv", help="Output table."),
    fields: str = typer.Option(..., "--fields", "--json_fields", help="Fields to fill: Occasion,City"),
    title_col: str = typer.Option("title_en", "--title-col", "--text-column", help="Column with the text."),
    col_map: Optional[str] = typer.Option(None, "--col-map", help="FIELD=COLUMN,...: fill these columns' gaps."),
    models: str = typer.Option("llama3.2", "--models", "-m"),
    fanout: bool = typer.Option(False, "--fanout"),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Template with {text} and {fields} (or @file)."),
    system: Optional[str] = typer.Option(None, "--system"),
    config: Optional[str] = typer.Option(None, "--config", "-c"),
    server: list[str] = typer.Option([], "--server", "-s"),
    api: str = typer.Option("ollama", "--api"),
    local: bool = typer.Option(False, "--local"),
    workers: int = typer.Option(3, "--workers", "-j"),
    max_concurrent_calls: Optional[int] = typer.Option(None, "--max-concurrent-calls"),
    chunk_size: int = typer.Option(20_000, "--chunk-size", "--chunk_size"),
    option: list[str] = typer.Option([], "--option", "-O"),
    temperature: Optional[float] = typer.Option(None, "--temperature"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    num_ctx: Optional[int] = typer.Option(None, "--num-ctx"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", "--num-predict"),
    json_retries: int = typer.Option(2, "--json-retries"),
    store: Optional[str] = typer.Option(None, "--store"),
    timeout: Optional[float] = typer.Option(None, "--timeout"),
    keep_formulas: bool = typer.Option(False, "--keep-formulas"),
    progress: str = typer.Option("auto", "--progress"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Ask the model only for the fields each row is missing; never overwrite existing values."""
    from ..tables.fill import fill_file_async

    setup_logging(verbose)
    with ExitStack() as stack:
        servers, local_model = _servers(server, api, local, config, workers, stack)
        written, stats = _run_interruptibly(fill_file_async(
            input, output, chunk_size=chunk_size, title_col=title_col, json_fields=tuple(_split(fields)),
            col_map=_col_map(col_map) or None, model_names=(local_model,) if local_model else _split(models),
            fanout=fanout, workers=workers, max_concurrent_calls=max_concurrent_calls,
            prompt_template=read_text_arg(prompt, "--prompt"), system=read_text_arg(system, "--system"),
            servers=servers, config=config, api=api, store=store, max_json_retries=json_retries,
            timeout=timeout, progress=progress, neutralize_formulas=not keep_formulas, argv=sys.argv,
            local=local, **_options(option, temperature, seed, num_ctx, max_tokens),
        ), str(store or default_store_path(output, None)))
    print(f"corral: {written} rows written to {output} ({stats.ok} answers ok, {stats.failed} failed, "
          f"{stats.cached} from the store); manifest in {output}.manifest.json", file=sys.stderr)
    if stats.failed:
        raise typer.Exit(1)

