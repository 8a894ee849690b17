"""A bench's figures for people (rich tables) and for programs (CSV, JSON)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import orjson
from rich.table import Table

from ..errors import UsageError
from ..sinks.output import write_whole
from .api import BenchResult


def _fmt(value: Any, spec: str = ".2f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def model_table(result: BenchResult) -> Table:
    table = Table(title=f"corral bench: {len(result.models)} model/server pair(s), "
                        f"{result.models[0].num_runs if result.models else 0} run(s) each")
    for column in ("server", "model", "ok", "latency s", "p50 s", "p95 s", "TTFT s", "tok/s",
                   "prompt tok/s", "cold load s"):
        table.add_column(column, justify="left" if column in ("server", "model") else "right")
    for figures in result.models:
        f = figures.figures()
        table.add_row(f["server"], f["model"], f"{f['ok']}/{f['num_runs']}", _fmt(f["latency"], ".3f"),
                      _fmt(f["latency_p50"], ".3f"), _fmt(f["latency_p95"], ".3f"), _fmt(f["ttft"], ".3f"),
                      _fmt(f["tokens_per_sec"], ".1f"), _fmt(f["prompt_tokens_per_sec"], ".1f"),
                      _fmt(f["load_time"], ".2f") if f["load_time_reported"] else "n/a")
    return table


def sweep_table(result: BenchResult) -> Table:
    table = Table(title="concurrency sweep (knee: the smallest level within "
                        f"{100 * result.sweeps[0].tolerance:g}% of the best throughput)")
    for column in ("server", "in flight", "requests", "ok", "seconds", "tok/s", "req/s", "latency s",
                   "p95 s", ""):
        table.add_column(column, justify="left" if column in ("server", "") else "right")
    for sweep in result.sweeps:
        knee, best = sweep.knee, sweep.best
        for level in sweep.levels:
            f = level.figures()
            mark = " ".join(x for x, on in (("knee", level.concurrency == knee),
                                             ("best", best is not None and level is best)) if on)
            table.add_row(sweep.server, str(level.concurrency), str(level.requests), str(level.ok),
                          _fmt(f["seconds"]), _fmt(f["tokens_per_sec"], ".1f"),
                          _fmt(f["requests_per_sec"], ".2f"), _fmt(f["latency"], ".3f"),
                          _fmt(f["latency_p95"], ".3f"), mark)
    return table


def gpu_table(summary: list[dict[str, Any]]) -> Table:
    table = Table(title="GPU utilisation (nvidia-smi)")
    for column in ("GPU", "name", "samples", "mean util %", "peak util %", "peak memory MiB", "total MiB"):
        table.add_column(column, justify="left" if column == "name" else "right")
    for row in summary:
        table.add_row(str(row["gpu"]), row["name"], str(row["samples"]), _fmt(row["utilization_mean"], ".1f"),
                      _fmt(row["utilization_max"], ".0f"), _fmt(row["memory_used_max"], ".0f"),
                      _fmt(row["memory_total"], ".0f"))
    return table


def csv_rows(result: BenchResult) -> list[dict[str, Any]]:
    """One row per model and server, per sweep level, and per GPU sample; ``kind`` says which."""
    rows: list[dict[str, Any]] = []
    for figures in result.models:
        row = {"kind": "model", **figures.seed_dict()}
        row.pop("latencies", None)
        row.pop("response", None)
        rows.append(row)
    for sweep in result.sweeps:
        knee = sweep.knee
        for level in sweep.levels:
            rows.append({"kind": "sweep", "server": sweep.server, "model": sweep.model, **level.figures(),
                         "knee": knee, "is_knee": level.concurrency == knee})
    for (gpu, name), points in sorted(result.gpu.items()):
        for t, utilization, memory in points:
            rows.append({"kind": "gpu", "gpu": gpu, "name": name, "t": t, "utilization": utilization,
                         "memory_used": memory})
    return rows


def to_csv(result: BenchResult) -> str:
    rows = csv_rows(result)
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_figures(result: BenchResult, path: str) -> Path:
    """``.csv`` or ``.json`` by extension."""
    target = Path(path)
    if target.suffix.lower() == ".csv":
        text = to_csv(result)
    elif target.suffix.lower() == ".json":
        text = orjson.dumps(result.figures(), option=orjson.OPT_INDENT_2).decode() + "\n"
    else:
        raise UsageError(f"{path}: figures are written as .csv or .json")
    try:
        write_whole(target, text)
    except OSError as exc:
        raise UsageError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return target
