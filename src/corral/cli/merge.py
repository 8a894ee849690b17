"""`corral merge`: every JSON answer of a run as one JSON array (ollama-batch-cluster's
response-json-merge)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from ..errors import UsageError
from . import app


@app.command("merge")
def merge_command(
    source: Optional[str] = typer.Argument(None, help="Folder of per-prompt JSON files, or a results JSONL."),
    input_dir: Optional[str] = typer.Option(
        None, "--input-dir", help="Same as SOURCE (ollama-batch-cluster's flag)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", "--output-file", help="Merged JSON file."),
) -> None:
    """Parse each response as JSON and write them all as one array; non-JSON answers are listed.

    \b
    Example:
      corral merge results.jsonl -o merged.json
      corral merge answers/ > merged.json
    """
    import orjson

    from ..sinks import merge_responses, write_whole

    path = source or input_dir
    if not path:
        raise UsageError("corral merge DIR_OR_RESULTS.jsonl -o merged.json")
    merged, skipped = merge_responses(path)
    data = orjson.dumps(merged, option=orjson.OPT_INDENT_2)
    if output:
        try:
            write_whole(output, data + b"\n", inputs=(path,))
        except OSError as exc:
            raise UsageError(f"{output}: cannot write: {exc.strerror or exc}") from None
        print(f"corral: merged {len(merged)} JSON answers into {output}", file=sys.stderr)
    else:
        sys.stdout.write(data.decode() + "\n")
    if skipped:
        print(f"corral: {len(skipped)} answer(s) were not JSON and were left out: "
              f"{', '.join(skipped[:10])}{' ...' if len(skipped) > 10 else ''}", file=sys.stderr)
