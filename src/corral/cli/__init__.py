"""The `corral` command: one module per subcommand, all thin fronts over the same engine."""

from __future__ import annotations

import sys

import typer

from ..errors import UsageError

app = typer.Typer(
    name="corral", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="Run large batches of LLM work across many Ollama and OpenAI-compatible servers.",
)


def _register() -> None:
    from . import agree, bench, cluster, embed, merge, report, run, serve, show, tables  # noqa: F401  (each module adds its command to `app`)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage and config errors become one line on stderr and exit code 2."""
    _register()
    try:
        app(args=argv, prog_name="corral")
    except UsageError as exc:
        print(f"corral: error: {exc}", file=sys.stderr)
        sys.exit(2)
