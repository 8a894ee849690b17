"""`corral report`: one self-contained HTML file describing a store's runs, for people to check.

Reads a store (never the servers): the manifest of the run that produced the data (models,
digests, settings; a later resume that sent nothing is not it), throughput over time, each server's
share of the work and latency, errors by kind with example rows and their raw answers, retries,
tokens, GPU utilisation when it was sampled, and for fan-out runs the agreement tables and confusion
heatmaps. Needs the ``corral[report]`` extra (plotly).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import UsageError
from ..sinks.output import write_whole
from .data import ReportData, load, resolve_store

__all__ = ["ReportData", "build_report", "load", "resolve_store"]


def build_report(store_or_output: str | os.PathLike[str], output: str | os.PathLike[str]) -> Path:
    """Write the report of a store (or of the output a run wrote beside its store) to ``output``."""
    try:
        from .page import render
    except ImportError as exc:  # plotly is an extra
        raise UsageError(f"corral report needs plotly: pip install 'corral[report]' ({exc})") from None
    return write_page(render(load(Path(store_or_output))), output, inputs=(store_or_output,))


def write_page(text: str, output: str | os.PathLike[str], *,
               inputs: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write a page whole or not at all (corral.sinks.output.write_whole); never onto ``inputs``."""
    target = Path(output)
    try:
        write_whole(target, text, inputs=inputs)
    except OSError as exc:
        raise UsageError(f"{target}: cannot write the report: {exc.strerror or exc}") from None
    return target
