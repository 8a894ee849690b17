"""The `corral` command: one module per subcommand, all thin fronts over the same engine.

Start-up matters for a command people type: every module of this package imports only typer and
light stdlib at its top level, and loads the engine, aiohttp, rich, pandas inside the command that
needs them, so `corral --help` and `corral --version` cost about an interpreter and typer.
Help is click's plain formatting (``rich_markup_mode=None``): rich is loaded only by commands that
print tables.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .._version import __version__
from ..errors import UsageError

app = typer.Typer(
    name="corral", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Run large batches of LLM work across many Ollama and OpenAI-compatible servers.\n\n"
         "`corral COMMAND --help` explains each command.\n\n"
         "\b\nExample:\n"
         "  corral run prompts.jsonl -s http://127.0.0.1:11434 -m llama3.2 -o results.jsonl\n"
         "  corral analyze reviews.csv -o labelled.csv --prompt 'Sentiment of: {text}'",
)


def _print_version(value: bool) -> None:
    if value:
        print(f"corral {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Optional[bool] = typer.Option(
        None, "--version", "-V", callback=_print_version, is_eager=True,
        help="Print corral's version and exit."),
) -> None:
    pass


def _register() -> None:
    from . import agree, bench, cluster, embed, gateway, merge, report, run, salvage, serve, show, status, tables  # noqa: F401  (each module adds its command to `app`)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and config errors become one line on stderr and exit code 2."""
    _register()
    try:
        app(args=argv, prog_name="corral")
    except UsageError as exc:
        from ..secrets import redact_url

        print(f"corral: error: {redact_url(str(exc))}", file=sys.stderr)
        sys.exit(2)
