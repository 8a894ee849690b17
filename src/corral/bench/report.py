"""`corral bench --report bench.html`: the bench's figures as one self-contained HTML page.

It is built like `corral report`'s page (plotly.js inline, figures as JSON drawn by one script that
writes what it drew into ``#corral-rendered`` and shows any script error in a banner), from the
same pieces, so the headless-Chromium check used for that page works here too. Needs plotly.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UsageError
from ..report import write_page
from .api import BenchResult
from .output import _fmt


def _figures(result: BenchResult) -> list:  # list[corral.report.figures.Figure]
    import plotly.graph_objects as go

    from ..report.figures import Figure, _layout, _utc

    made = []
    if result.sweeps:
        fig = go.Figure()
        for sweep in result.sweeps:
            levels = [lv for lv in sweep.levels if lv.ok]
            fig.add_trace(go.Scatter(
                x=[lv.concurrency for lv in levels], y=[round(sweep.throughput(lv), 3) for lv in levels],
                customdata=[round(lv.figures()["latency"] or 0, 4) for lv in levels],
                name=sweep.server, mode="lines+markers",
                hovertemplate="%{x} in flight<br>%{y:.1f}<br>mean latency %{customdata:.3f} s"))
            knee = sweep.knee
            if knee is not None:
                at = next(lv for lv in levels if lv.concurrency == knee)
                fig.add_trace(go.Scatter(x=[knee], y=[round(sweep.throughput(at), 3)], mode="markers",
                                         name=f"knee {sweep.server}", marker=dict(size=14, symbol="star")))
        unit = "tokens / s" if all(s.by_tokens for s in result.sweeps) else "tokens or requests / s"
        knees = ", ".join(f"{s.server}: {s.knee}" for s in result.sweeps)
        made.append(Figure("fig-sweep", "Throughput vs concurrency, per server",
                           f"Completed output {unit} with that many requests in flight; the star is the "
                           f"knee (smallest level within {100 * result.sweeps[0].tolerance:g}% of the "
                           f"best): {knees}.",
                           _layout(fig, xaxis_title="requests in flight", xaxis_type="log",
                                   yaxis_title=unit, yaxis_rangemode="tozero")))
    measured = [m for m in result.models if m.runs]
    if measured:
        fig = go.Figure()
        for m in measured:
            name = f"{m.model} @ {m.server}"
            fig.add_trace(go.Box(y=[round(x, 4) for x in m.latencies], name=name, boxpoints="all",
                                 jitter=0.3, boxmean=True))
        made.append(Figure("fig-model-latency", "Latency per model",
                           "Seconds per request (streamed, one at a time), every run shown; box from the "
                           "first to the third quartile, line at the median, dashed at the mean.",
                           _layout(fig, yaxis_title="seconds", showlegend=False, yaxis_rangemode="tozero")))
    if result.gpu:
        fig = go.Figure()
        for (index, name), points in sorted(result.gpu.items()):
            fig.add_trace(go.Scatter(x=[_utc(t) for t, _, _ in points], y=[u for _, u, _ in points],
                                     name=f"GPU {index} {name}".strip(), mode="lines+markers",
                                     customdata=[m for _, _, m in points],
                                     hovertemplate="%{x}<br>%{y:.0f}% busy<br>%{customdata:.0f} MiB used"))
        made.append(Figure("fig-gpu", "GPU utilisation over time",
                           "Sampled with nvidia-smi on the machine that ran the bench.",
                           _layout(fig, xaxis_title="time (UTC)", yaxis_title="utilisation %",
                                   yaxis_range=[0, 100])))
    return made


def render(result: BenchResult) -> str:
    try:
        from ..report import page
    except ImportError as exc:  # plotly is an extra
        raise UsageError(f"--report needs plotly: pip install 'corral[report]' ({exc})") from None
    e = page._e
    plots = _figures(result)
    rows = []
    for m in result.models:
        f = m.figures()
        rows.append([e(f["server"]), e(f["model"]), f"{f['ok']}/{f['num_runs']}", _fmt(f["latency"], ".3f"),
                     _fmt(f["latency_p95"], ".3f"), _fmt(f["ttft"], ".3f"), _fmt(f["tokens_per_sec"], ".1f"),
                     _fmt(f["prompt_tokens_per_sec"], ".1f"),
                     _fmt(f["load_time"], ".2f") if f["load_time_reported"] else "n/a", e(f["error"] or "")])
    models_html = "<h2>Per model</h2>" + page._table(
        ["server", "model", "ok", "latency s", "p95 s", "TTFT s", "tok/s", "prompt tok/s", "cold load s",
         "error"], rows, {2, 3, 4, 5, 6, 7, 8})
    gpu_html = ""
    if result.gpu_summary:
        gpu_html = "<h2>GPUs</h2>" + page._table(
            ["GPU", "name", "samples", "mean util %", "peak util %", "peak MiB"],
            [[str(g["gpu"]), e(g["name"]), str(g["samples"]), _fmt(g["utilization_mean"], ".1f"),
              _fmt(g["utilization_max"], ".0f"), _fmt(g["memory_used_max"], ".0f")]
             for g in result.gpu_summary], {0, 2, 3, 4, 5})
    elif result.gpu_note:
        gpu_html = f'<p class=warn id="gpu-note">{e(result.gpu_note)}</p>'
    problems = "".join(f"<p class=warn>{e(p)}</p>" for p in result.problems)
    blocks = [page._figure_block(fig) for fig in plots]
    return page.document(
        "corral bench", "corral bench", f"Prompt <code>{e(result.prompt)}</code>; {result.seconds:.1f} s",
        [problems, models_html, gpu_html, '<section id="figures">', *blocks, "</section>"], plots)


def write_report(result: BenchResult, output: str | os.PathLike[str]) -> Path:
    return write_page(render(result), output)
