"""`corral embed`: one column of a table to a vector file, batched over every server, resumable."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..errors import UsageError
from . import app
from .common import API_KEY_ENV_HELP, RPM_HELP, TPM_HELP, keyed, parse_option_pairs, setup_logging
from .run import _run_interruptibly


@app.command("embed")
def embed_command(
    input: str = typer.Argument(..., help="Table: CSV, TSV, Parquet, JSONL or Excel."),
    output: str = typer.Option(..., "-o", "--output",
                               help="Vectors: .parquet (ids + embedding column), .npy (+ .ids.parquet) or .jsonl."),
    text_column: str = typer.Option("text", "--text-column", help="Column holding the texts."),
    id_column: list[str] = typer.Option(
        [], "--id-column", metavar="COLUMN", help="Id column(s) to keep beside each vector (repeat or comma-separate) "
                                "[default: id if the table has one, else the row number]."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Embedding model, e.g. nomic-embed-text."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Texts per request."),
    truncate: Optional[bool] = typer.Option(
        None, "--truncate/--no-truncate",
        help="Ollama: cut texts longer than the context (its default) or refuse them."),
    dimensions: Optional[int] = typer.Option(None, "--dimensions",
        help="Shorter vectors, where the model supports it."),
    keep_alive: Optional[str] = typer.Option(None, "--keep-alive", help="Ollama: keep the model loaded, e.g. 30m."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Only the first N rows."),
    skip_existing: bool = typer.Option(False, "--skip-existing",
                                       help="Keep the vectors of rows already in the output; do not send them."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Send texts that failed in an earlier run again."),
    config: Optional[str] = typer.Option(None, "--config", "-c",
        help="TOML config (ollama-batch-cluster's or [[servers]])."),
    server: list[str] = typer.Option([], "--server", "-s", metavar="URL", help="Server URL (repeat for more)."),
    api: str = typer.Option("ollama", "--api", help="Protocol of --server URLs: ollama or openai."),
    api_key_env: Optional[str] = typer.Option(None, "--api-key-env", metavar="NAME", help=API_KEY_ENV_HELP),
    rpm: Optional[int] = typer.Option(None, "--rpm", metavar="N", help=RPM_HELP),
    tpm: Optional[int] = typer.Option(None, "--tpm", metavar="N", help=TPM_HELP),
    local: bool = typer.Option(False, "--local", help="Embed with the bundled model on a local llama.cpp server."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", "-j", help="Requests in flight per server."),
    option: list[str] = typer.Option([], "--option", "-O", metavar="NAME=VALUE",
        help="Model option NAME=VALUE (e.g. num_ctx=8192)."),
    extra_option: list[str] = typer.Option([], "--extra-option", metavar="NAME=VALUE",
        help="An option sent as it is, unchecked: one the server knows and corral does not (repeatable)."),
    store: Optional[str] = typer.Option(None, "--store", help="Where vectors are kept [<output>.corral.db]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds per request."),
    chunk_size: int = typer.Option(4096, "--chunk-size", help="Rows read (and written) at a time."),
    encoding: Optional[str] = typer.Option(
        None, "--encoding", help="Encoding of a CSV or TSV input that is not UTF-8: cp1252, latin-1, utf-16..."),
    progress: str = typer.Option("auto", "--progress", help="auto, bar, log or none."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="More log lines on stderr (-vv: debug)."),
) -> None:
    """Embed a text column into vectors: batched, spread over servers, resumable.

    Each distinct text is embedded once and kept in the store, so a re-run sends only what is new.

    \b
    Example:
      corral embed movies.parquet --text-column overview -m nomic-embed-text -o vectors.parquet
      corral embed notes.csv -m nomic-embed-text -s http://127.0.0.1:11434 -o notes.npy --id-column note_id
    """
    from rich.console import Console

    from ..embeddings import embed_file_async
    from ..jobs import default_store_path

    setup_logging(verbose)
    ids = [name.strip() for value in id_column for name in value.split(",") if name.strip()]
    err = Console(file=sys.stderr, width=None if sys.stderr.isatty() else 120)
    store_path = store or str(default_store_path(output, None))
    if not model and not config and not local:
        raise UsageError("no model: give --model (e.g. --model nomic-embed-text) or --local")
    report = _run_interruptibly(embed_file_async(
        input, output, text_column=text_column, id_columns=ids or None, model=model,
        servers=keyed(list(server), api, api_key_env, rpm, tpm), config=config, api=api, local=local,
        batch_size=batch_size,
        truncate=truncate,
        dimensions=dimensions, keep_alive=keep_alive, options=parse_option_pairs(option),
        extra_options=parse_option_pairs(extra_option, "--extra-option"), limit=limit,
        skip_existing=skip_existing, retry_failed=retry_failed, store=store_path,
        concurrency=concurrency, timeout=timeout, chunk_size=chunk_size, progress=progress,
        argv=sys.argv, encoding=encoding,
    ), store_path)
    c = report.counts
    for message in report.unreachable:
        err.print(f"[yellow]corral: skipped unreachable server {message}[/yellow]", highlight=False)
    rate = c.embedded / c.seconds if c.seconds > 0 else 0.0
    err.print(f"corral: {c.rows} rows -> {output} ({c.dim or 0}-dim float32): {c.embedded} embedded, "
              f"{c.cached} from the store, {c.deduplicated} duplicate{'' if c.deduplicated == 1 else 's'}, "
              f"{report.failed_rows} failed; "
              f"{c.requests} requests in {c.seconds:.1f}s ({rate:.1f} texts/s)", highlight=False, markup=False)
    if report.errors:
        err.print(f"corral: {report.failed_rows} row(s) have no vector:", style="red", highlight=False)
        for row, problem in report.errors[:20]:
            err.print(f"  {row}: {problem}", highlight=False, markup=False)
        if report.failed_rows > 20:
            err.print(f"  ... and {report.failed_rows - 20} more (see the error column of the output)", highlight=False)
        raise typer.Exit(1)
