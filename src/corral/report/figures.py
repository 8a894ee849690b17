"""The report's plots, as plotly figures built from `ReportData` (no drawing code of our own).

Each figure carries an id (the HTML element it is drawn into), a title and a caption that says how
to read it. Figures whose data is empty (no failures, no GPU samples, no fan-out) are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import plotly.graph_objects as go

from .data import ReportData

OK_COLOUR = "#2e7d32"
FAILED_COLOUR = "#c62828"
PROMPT_COLOUR = "#1565c0"
COMPLETION_COLOUR = "#ef6c00"


@dataclass
class Figure:
    id: str
    title: str
    caption: str
    figure: go.Figure


def _layout(fig: go.Figure, *, height: int = 360, **extra: Any) -> go.Figure:
    fig.update_layout(template="plotly_white", height=height, margin=dict(l=60, r=20, t=30, b=50),
                      legend=dict(orientation="h", y=-0.2), **extra)
    return fig


def _utc(epoch: float) -> str:
    """Plotly's date format, to the millisecond (a short run's buckets are a tenth of a second)."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def throughput(data: ReportData) -> Figure | None:
    curves = [c for c in data.throughput if c.counts]
    if not curves:
        return None
    fig = go.Figure()
    for curve in curves:
        name = f"run {curve.run_id}" if curve.run_id is not None else "run ?"
        fig.add_trace(go.Scatter(
            x=[_utc(t) for t in curve.starts], y=[n / curve.bucket_seconds for n in curve.counts],
            customdata=curve.counts, name=name, mode="lines+markers" if len(curve.counts) < 40 else "lines",
            line_shape="hv",
            hovertemplate=f"%{{x}}<br>%{{y:.2f}} rows/s<br>%{{customdata}} rows in {curve.bucket_seconds:g} s"
                          f"<extra>{name}</extra>"))
    sizes = sorted({c.bucket_seconds for c in curves})
    caption = (f"Rows finished per second (successes and final failures) in {'/'.join(f'{x:g}' for x in sizes)} s "
               "buckets, per run; rows answered from the store are not sent and not counted.")
    return Figure("fig-throughput", "Throughput over time", caption,
                  _layout(fig, xaxis_title="time (UTC)", yaxis_title="rows / s", yaxis_rangemode="tozero"))


def servers(data: ReportData) -> Figure | None:
    if not data.servers:
        return None
    names = [s.server for s in data.servers]
    fig = go.Figure([
        go.Bar(name="ok", x=names, y=[s.ok for s in data.servers], marker_color=OK_COLOUR),
        go.Bar(name="failed", x=names, y=[s.failed for s in data.servers], marker_color=FAILED_COLOUR),
    ])
    share = ", ".join(f"{s.server} {100 * (s.ok + s.failed) / max(data.rows, 1):.0f}%" for s in data.servers)
    return Figure("fig-servers", "Share of work per server",
                  f"Rows each server gave the final answer for ({share}).",
                  _layout(fig, barmode="stack", yaxis_title="rows"))


def latency(data: ReportData) -> Figure | None:
    measured = [s for s in data.servers if s.latency]
    if not measured:
        return None
    fig = go.Figure()
    for s in measured:
        lat = s.latency or {}
        fig.add_trace(go.Box(
            name=s.server, x=[s.server], q1=[lat["q1"]], median=[lat["median"]], q3=[lat["q3"]],
            lowerfence=[lat["p5"]], upperfence=[lat["p95"]], mean=[lat["mean"]], boxpoints=False))
    caption = ("Seconds per request (the attempt that gave the final answer): box from the first to "
               "the third quartile, line at the median, dashed at the mean, whiskers at the 5th and "
               "95th percentiles. n = " + ", ".join(f"{s.server} {int((s.latency or {})['n'])}"
                                                    for s in measured) + ".")
    return Figure("fig-latency", "Latency per server", caption,
                  _layout(fig, yaxis_title="seconds", showlegend=False))


def errors(data: ReportData) -> Figure | None:
    if not data.errors:
        return None
    fig = go.Figure(go.Bar(name="failed rows", x=[e.kind for e in data.errors],
                           y=[e.count for e in data.errors], marker_color=FAILED_COLOUR))
    return Figure("fig-errors", "Errors by kind",
                  "Rows that failed for good, by kind of error; examples are listed below.",
                  _layout(fig, yaxis_title="rows", showlegend=False))


def attempts(data: ReportData) -> Figure | None:
    if not data.attempts:
        return None
    fig = go.Figure(go.Bar(name="rows", x=[str(a) for a, _ in data.attempts],
                           y=[n for _, n in data.attempts], marker_color=PROMPT_COLOUR))
    retried = sum(n for a, n in data.attempts if a > 1)
    return Figure("fig-attempts", "Attempts per row",
                  f"How many tries each row needed; {retried} row(s) needed more than one (retries "
                  "after errors, busy servers, or answers that were not the JSON asked for).",
                  _layout(fig, xaxis_title="attempts", yaxis_title="rows", xaxis_type="category",
                          showlegend=False))


def tokens(data: ReportData) -> Figure | None:
    if not any(s.prompt_tokens or s.completion_tokens for s in data.servers):
        return None
    names = [s.server for s in data.servers]
    fig = go.Figure([
        go.Bar(name="prompt tokens", x=names, y=[s.prompt_tokens for s in data.servers],
               marker_color=PROMPT_COLOUR),
        go.Bar(name="completion tokens", x=names, y=[s.completion_tokens for s in data.servers],
               marker_color=COMPLETION_COLOUR),
    ])
    return Figure("fig-tokens", "Tokens per server",
                  "Prompt and completion tokens as the servers counted them, for the stored answers.",
                  _layout(fig, barmode="group", yaxis_title="tokens"))


def gpu(data: ReportData) -> Figure | None:
    if not data.gpu:
        return None
    fig = go.Figure()
    for (index, name), points in sorted(data.gpu.items()):
        fig.add_trace(go.Scatter(x=[_utc(t) for t, _, _ in points], y=[u for _, u, _ in points],
                                 name=f"GPU {index} {name}".strip(), mode="lines+markers",
                                 customdata=[m for _, _, m in points],
                                 hovertemplate="%{x}<br>%{y:.0f}% busy<br>%{customdata:.0f} MiB used"))
    return Figure("fig-gpu", "GPU utilisation",
                  "Sampled with nvidia-smi on the machine that ran corral (CORRAL_GPU_INTERVAL seconds apart).",
                  _layout(fig, xaxis_title="time (UTC)", yaxis_title="utilisation %",
                          yaxis_range=[0, 100]))


def confusion(key_index: int, pair_index: int, entry: dict[str, Any]) -> Figure:
    labels = [str(v) for v in entry.get("labels") or []]
    counts = entry.get("counts") or []
    a, b = entry.get("model_a", "A"), entry.get("model_b", "B")
    fig = go.Figure(go.Heatmap(z=counts, x=labels, y=labels, colorscale="Blues", texttemplate="%{z}",
                               hovertemplate=f"{a}: %{{y}}<br>{b}: %{{x}}<br>%{{z}} rows<extra></extra>",
                               name=f"{a} × {b}"))
    size = max(260, 60 + 40 * len(labels))
    fig = _layout(fig, height=size, xaxis_title=b, yaxis_title=a, xaxis_type="category",
                  yaxis_type="category", yaxis_autorange="reversed")
    return Figure(f"fig-confusion-{key_index}-{pair_index}", f"{a} (rows) × {b} (columns)",
                  "Rows both models answered, by the label each gave.", fig)


def all_figures(data: ReportData) -> list[Figure]:
    made = (throughput(data), servers(data), latency(data), errors(data), attempts(data), tokens(data),
            gpu(data))
    return [f for f in made if f is not None]
