"""`corral cluster merge`: the cluster files of several machines as one config for `corral run`."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .. import cluster
from . import app

cluster_app = typer.Typer(add_completion=False, no_args_is_help=True,
                          help="Combine the cluster files `corral serve` wrote on several machines.")
app.add_typer(cluster_app, name="cluster")


@cluster_app.command("merge")
def merge_command(
    files: list[str] = typer.Argument(..., help="Cluster TOML files (either form)."),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="Merged file (default stdout)."),
    form: str = typer.Option("servers", "--form", help="servers or instances (ollama-batch-cluster's form)."),
) -> None:
    """Every server of FILES in one file; model and system message from the first file that sets them."""
    merged, warnings = cluster.merge(files)
    cluster.warn(warnings)
    text = cluster.render(merged.servers, model=merged.model, system_message=merged.system_message,
                          options=merged.options, form=form,
                          header=f"Merged by `corral cluster merge` from {', '.join(files)}.")
    if output:
        cluster.write(output, text)
        print(f"corral: wrote {output} ({len(merged.servers)} servers from {len(files)} files)",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
