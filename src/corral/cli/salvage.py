"""`corral salvage`: the readable rows of a damaged journal, copied to a new one."""

from __future__ import annotations

import sys

import typer

from . import app


@app.command("salvage")
def salvage_command(
    journal: str = typer.Argument(..., help="The damaged journal (.corral.db)."),
    new: str = typer.Argument(..., help="The new journal to create (must not exist)."),
) -> None:
    """Copy every readable row of a damaged journal into a new journal.

    Rows on damaged pages are left out: the next run sends them again. Run the job with
    --store NEW to use the new journal (or move it to where the old one was).

    \b
    Example:
      corral salvage results.jsonl.corral.db saved.corral.db
      corral run prompts.jsonl -o results.jsonl --store saved.corral.db -s http://127.0.0.1:11434
    """
    from ..salvage import salvage

    report = salvage(journal, new)
    print(f"corral: salvaged {journal} into {new}: {report.line()}", file=sys.stderr)
