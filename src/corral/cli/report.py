"""`corral report`: a store's runs as one self-contained HTML page."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from . import app


@app.command("report")
def report_command(
    source: str = typer.Argument(..., help="A store (.corral.db), or the output a run wrote beside it."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="HTML file [<store>.report.html]."),
) -> None:
    """Write an HTML report: manifest, throughput, servers, latency, errors, tokens, agreement."""
    from ..report import build_report, resolve_store

    target = output or f"{resolve_store(source)}.report.html"
    path = build_report(source, target)
    print(f"corral: report in {path}", file=sys.stderr)
