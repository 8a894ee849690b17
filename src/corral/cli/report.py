"""`corral report`: a store's runs as one self-contained HTML page."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import app


@app.command("report")
def report_command(
    source: str = typer.Argument(..., help="A store (.corral.db), or the output a run wrote beside it."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="HTML file [SOURCE.report.html]."),
) -> None:
    """Write an HTML report: manifest, throughput, servers, latency, errors, tokens, agreement.

    \b
    Example:
      corral report results.jsonl                 (writes results.jsonl.report.html)
      corral report labelled.csv.corral.db -o run.html
    """
    from ..report import build_report

    target = output or f"{str(Path(source)).removesuffix('.manifest.json')}.report.html"
    path = build_report(source, target)
    print(f"corral: report in {path}", file=sys.stderr)
