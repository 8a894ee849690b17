"""`corral show`: print prompts and answers for people (ollama-batch-cluster's response-printer)."""

from __future__ import annotations

import sys

import typer

from . import app

RULE = "#" * 40


@app.command("show")
def show_command(
    source: str = typer.Argument(..., help="Folder of per-prompt JSON files, or a results JSONL."),
    errors_only: bool = typer.Option(False, "--errors", help="Only rows that failed (a folder's errors.jsonl)."),
) -> None:
    """Print each prompt and its response, file by file (or row by row).

    \b
    Example:
      corral show results.jsonl --errors
      corral show answers/ | less
    """
    from ..sinks import iter_result_files
    from ..terminal import visible

    out = sys.stdout
    for label, data in iter_result_files(source, errors=True):
        if errors_only and not data.get("error"):
            continue
        kind = "File" if label.split(" (", 1)[0].endswith(".json") else "Item"  # "x.json (line 3)"
        out.write(f"{RULE}\n# {kind}: {visible(label, one_line=True)}\n{RULE}\n")
        if data.get("prompt") is not None:
            out.write(f"Prompt:\n{visible(data.get('prompt'))}\n\n")
        if data.get("error"):
            out.write(f"Error:\n{visible(data['error'])}\n\n")
        else:
            out.write(f"Response:\n{visible(data.get('response'))}\n\n")
