"""The report as one self-contained HTML page: plotly.js inline, figures as JSON, tables as HTML.

No network is needed to open it (reviewers read reports offline, attached to a paper). The page
draws its figures with one script, then writes what it drew into a hidden ``#corral-rendered``
element, and shows any script error in a visible banner: a report that failed to render says so
instead of showing empty boxes (and tests read both).
"""

from __future__ import annotations

import html
import shlex
from datetime import UTC, datetime
from typing import Any

import orjson
from plotly.offline import get_plotlyjs

from .._version import __version__
from ..manifest import short_digest
from . import figures as figs
from .data import ReportData

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1100px;
       padding: 0 24px 48px; color: #1b1b1b; }
h1 { margin: 28px 0 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.meta, .caption { color: #555; } .caption { margin: 4px 0 8px; font-size: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 16px; min-width: 110px; }
.card b { display: block; font-size: 22px; } .card span { color: #555; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f5f5f5; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, pre { font: 13px/1.4 ui-monospace, Menlo, Consolas, monospace; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; white-space: pre-wrap; max-height: 320px; }
.warn { background: #fff4e5; border-left: 4px solid #ef6c00; padding: 6px 10px; margin: 6px 0; }
#corral-errors { background: #fdecea; border-left: 4px solid #c62828; padding: 8px 12px; }
.figure { min-height: 260px; }
"""

# Errors are caught from the first script on, so even a failure inside plotly.js is shown.
_ERROR_HOOK = """
window.corralErrors = [];
function corralReport(message) {
  window.corralErrors.push(String(message));
  var box = document.getElementById('corral-errors');
  if (box) { box.hidden = false; box.textContent = 'This report did not render fully: ' +
             window.corralErrors.join(' | '); }
}
window.addEventListener('error', function (e) { corralReport(e.message || e); });
window.addEventListener('unhandledrejection', function (e) { corralReport(e.reason); });
(function () { var original = console.error;
  console.error = function () { corralReport(Array.prototype.join.call(arguments, ' '));
                                return original.apply(console, arguments); }; })();
"""

_RENDER = """
(function () {
  var specs = JSON.parse(document.getElementById('corral-figures').textContent);
  var config = {displaylogo: false, responsive: true};
  var drawing = Object.keys(specs).map(function (id) {
    return Plotly.newPlot(id, specs[id].data, specs[id].layout, config);
  });
  Promise.all(drawing).then(function (divs) {
    var rendered = {};
    divs.forEach(function (gd) {
      rendered[gd.id] = {svg: gd.querySelectorAll('svg.main-svg').length, traces: gd.data.map(
        function (t) { return {name: t.name, type: t.type, x: t.x, y: t.y, z: t.z,
                               customdata: t.customdata}; })};
    });
    document.getElementById('corral-rendered').textContent = JSON.stringify(rendered);
    document.body.setAttribute('data-rendered', String(divs.length));
  }).catch(corralReport);
})();
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _num(value: Any, spec: str = ",") -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and spec == ",":
        spec = ",.3g"
    return format(value, spec)


def _utc(epoch: float | None) -> str:
    if not epoch:
        return "—"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(head: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    """Cells are HTML already (escape before calling); ``numeric`` columns are right-aligned."""
    numeric = numeric or set()
    out = ["<table><thead><tr>", *(f"<th>{h}</th>" for h in head), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td class=num>{c}</td>" if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _pairs(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _json_block(value: Any) -> str:
    return f"<pre>{_e(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())}</pre>"


def _script_json(value: str) -> str:
    """JSON inside <script>: '<' escaped so no text in it can close the element."""
    return value.replace("<", "\\u003c")


# -- sections -----------------------------------------------------------------------------------

def _summary(data: ReportData) -> str:
    counts = [r["counts"] for r in data.runs]
    sent = sum(c.get("sent") or 0 for c in counts)
    retries = sum(c.get("retries") or 0 for c in counts)
    prompt = sum(s.prompt_tokens for s in data.servers)
    completion = sum(s.completion_tokens for s in data.servers)
    wall = sum(c.get("seconds") or 0 for c in counts)
    cards = [("rows in the store", data.rows), ("ok", data.ok), ("failed", data.failed),
             ("requests sent", sent), ("retries", retries), ("prompt tokens", prompt),
             ("completion tokens", completion), ("runs", len(data.runs)),
             ("engine time", f"{wall:,.1f} s")]
    priced = [x for x in data.servers if x.cost is not None]
    if priced:
        cards.append(("cost", f"{sum(x.cost or 0.0 for x in priced):,.4f}"))
    body = "".join(f'<div class=card id="card-{label.replace(" ", "-")}"><b>{_e(_num(v))}</b>'
                   f"<span>{_e(label)}</span></div>" for label, v in cards)
    live = data.live
    note = ""
    if live:
        done = f"{live.get('done')}/{live.get('total')}" if live.get("total") is not None else str(live.get("done"))
        note = (f'<p class=meta id="live-note">A snapshot of a running job (run {_e(live.get("run_id"))}, '
                f"{_e(live.get('summary'))}): {_e(done)} done when this page was made.</p>")
    costs = ""
    if priced:
        costs = "<h3>Cost per server</h3>" + _table(
            ["server", "prompt tokens", "completion tokens", "cost"],
            [[_e(x.server), _e(_num(x.prompt_tokens)), _e(_num(x.completion_tokens)), _e(f"{x.cost:,.4f}")]
             for x in priced])
    return f'<section id="summary">{note}<div class=cards>{body}</div>{costs}</section>'


def _manifest(m: dict[str, Any] | None) -> str:
    if not m:
        return ('<section id="manifest"><h2>Manifest</h2><p class=meta>No manifest in this store '
                "(it was written by a corral without manifests).</p></section>")
    return (f'<section id="manifest"><h2>Manifest of the run that produced the data '
            f'(run {_e(m.get("run_id"))})</h2>'
            f"{_notes(m)}{_run_facts(m)}<h3>Servers and models</h3>{_models_table(m)}"
            f"<h3>Settings</h3>{_settings(m)}</section>")


def _run_facts(m: dict[str, Any]) -> str:
    inp, counts, tokens = m.get("input") or {}, m.get("counts") or {}, m.get("tokens") or {}
    wall = m.get("wall_seconds")
    return _pairs([
        ("kind", _e(m.get("kind"))), ("status", _e(m.get("status"))),
        ("started", _e(m.get("started_at"))), ("finished", _e(m.get("finished_at"))),
        ("wall time", _e(f"{wall} s" if wall is not None else "—")),
        ("corral", _e(m.get("corral_version"))), ("python", _e(m.get("python"))),
        ("command", f"<code>{_e(shlex.join(m.get('command') or []) or '—')}</code>"),
        ("input", f"{_e(inp.get('path') or inp.get('kind'))}<br><code>sha256 {_e(inp.get('sha256'))}</code>"
                  f"<br>{_e(_num(inp.get('rows')))} rows"),
        ("counts", _e(", ".join(f"{k} {v}" for k, v in counts.items() if v is not None))),
        ("tokens", _e(f"prompt {tokens.get('prompt', '—')}, completion {tokens.get('completion', '—')}")),
    ])


def _models_table(m: dict[str, Any]) -> str:
    rows = []
    for server in m.get("servers") or []:
        if not server.get("reachable", True):
            rows.append([_e(server.get("label")), "unreachable", "", "", _e(server.get("error")), ""])
            continue
        kind = _e(f"{server.get('kind')} {server.get('version') or ''}")
        for name, facts in (server.get("models") or {}).items():
            facts = facts or {}
            details = facts.get("details") or {}
            about = (details.get("parameter_size"), details.get("quantization_level"), facts.get("model_file"),
                     facts.get("ftype"))
            digest = facts.get("digest")
            rows.append([_e(server.get("label")), kind, f"<b>{_e(name)}</b>",
                         f'<code title="{_e(digest)}">{_e(short_digest(digest))}</code>',
                         _e(facts.get("digest_source")), _e(", ".join(str(v) for v in about if v))])
    return _table(["server", "kind / version", "model", "digest", "from", "details"], rows)


def _settings(m: dict[str, Any]) -> str:
    job = m.get("job") or {}
    settings = [("models", _e(", ".join(job.get("models") or []))),
                ("options", _json_block(job.get("options") or {}))]
    if job.get("format") is not None:
        settings.append(("format / schema", _json_block(job.get("format"))))
    for key, label in (("system", "system message"), ("prompt_template", "prompt template")):
        if job.get(key):
            settings.append((label, f"<pre>{_e(job[key])}</pre>"))
    settings.append(("engine", _json_block(m.get("engine") or {})))
    return _pairs(settings)


def _notes(m: dict[str, Any]) -> str:
    """Warnings (a model differing across servers) and, for a reproduction, how it compared."""
    notes = [_e(w) for w in m.get("warnings") or []]
    repro = m.get("reproduction")
    if repro:
        changes = "; ".join(repro.get("digest_changes") or []) or "none"
        notes.append(f"Reproduction of {_e(repro.get('manifest'))}: {_e(repro.get('identical', 0))} identical, "
                     f"{_e(repro.get('different', 0))} different answers; digest changes: {_e(changes)}")
    return "".join(f"<div class=warn>{note}</div>" for note in notes)


def _error_examples(data: ReportData) -> str:
    rows = []
    for kind in data.errors:
        for ex in kind.examples:
            prompt, answer = ex.get("prompt") or "", ex.get("response")
            rows.append([_e(kind.kind), _e(_clip(prompt, 160)), _e(ex.get("model")), _e(ex.get("server")),
                         _e(ex.get("attempts")), _e(ex.get("status_code")), _e((ex.get("error") or "")[:300]),
                         f"<code>{_e(_clip(answer, 300))}</code>" if answer is not None else "—"])
    if not rows:
        return ""
    return ("<h3>Example failed rows</h3>"
            + _table(["kind", "prompt", "model", "server", "attempts", "HTTP", "error", "raw answer"], rows,
                     {4, 5}))


def _clip(text: str, limit: int) -> str:
    return text[:limit] + ("…" if len(text) > limit else "")


def _per_model(data: ReportData) -> str:
    keys = ("ok", "failed", "prompt_tokens", "completion_tokens")
    rows = [[_e(m["model"]), *(_e(_num(m[k])) for k in keys)] for m in data.models]
    return "<h3>Per model</h3>" + _table(["model", "ok", "failed", "prompt tokens", "completion tokens"],
                                         rows, {1, 2, 3, 4})


def _agreement(agreement: dict[str, Any] | None) -> tuple[str, list[figs.Figure]]:
    """The tables and lines `corral agree` prints, drawn by the same views, plus confusion heatmaps."""
    if not agreement:
        return "", []
    from ..tables.agreement.views import key_html

    parts = ['<section id="agreement"><h2>Agreement between models</h2>']
    made: list[figs.Figure] = []
    for k, (key, ka) in enumerate((agreement.get("keys") or {}).items()):
        parts.append(key_html(key, ka))
        for i, entry in enumerate(ka.get("confusion") or []):
            fig = figs.confusion(k, i, entry)
            made.append(fig)
            parts.append(_figure_block(fig, level=4))
    parts.append("</section>")
    return "".join(parts), made


def _runs(data: ReportData) -> str:
    rows = []
    for run in data.runs:
        c, m = run["counts"], run["manifest"] or {}
        wall = f"{run['finished_at'] - run['started_at']:.1f}" if run["finished_at"] else "—"
        status = m.get("status", "finished" if run["finished_at"] else "—")
        rows.append([_e(run["id"]), _e(m.get("kind", "—")), _e(status),
                     _e(_utc(run["started_at"])), _e(wall), *(_e(_num(c.get(k))) for k in
                     ("done", "ok", "failed", "cached", "sent", "retries")),
                     f"<code>{_e(shlex.join(run['argv'] or []))}</code>"])
    return ('<section id="runs"><h2>Runs in this store</h2>'
            + _table(["run", "kind", "status", "started", "seconds", "rows", "ok", "failed", "cached",
                      "sent", "retries", "command"], rows, {0, 4, 5, 6, 7, 8, 9, 10}) + "</section>")


def _figure_block(fig: figs.Figure, level: int = 2) -> str:
    return (f"<h{level}>{_e(fig.title)}</h{level}><p class=caption>{_e(fig.caption)}</p>"
            f'<div id="{fig.id}" class=figure></div>')


def render(data: ReportData) -> str:
    """The whole page."""
    plots = figs.all_figures(data)
    blocks = []
    for fig in plots:
        blocks.append(_figure_block(fig))
        if fig.id == "fig-errors":
            blocks.append(_error_examples(data))
        if fig.id == "fig-tokens":
            blocks.append(_per_model(data))
    agreement_html, heatmaps = _agreement(data.agreement)
    return document(
        f"corral report: {_e(data.store_path)}", "corral report",
        f"Store <code>{_e(data.store_path)}</code>",
        [_summary(data), _manifest(data.manifest), '<section id="figures">', *blocks, "</section>",
         agreement_html, _runs(data)],
        [*plots, *heatmaps])


def document(title: str, heading: str, meta: str, body: list[str], figures: list[Any]) -> str:
    """A self-contained page (plotly inline) around ``body``: the figures' specs drawn by _RENDER
    into their blocks, and any script error shown on the page (the Chromium tests read both)."""
    specs = "{" + ",".join(f"{orjson.dumps(f.id).decode()}:{f.figure.to_json()}" for f in figures) + "}"
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return "".join([
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{title}</title><style>{_CSS}</style>",
        f"<script>{_ERROR_HOOK}</script><script>{get_plotlyjs()}</script></head><body>",
        f"<h1>{heading}</h1><p class=meta>{meta}; generated {generated} by corral {_e(__version__)}.</p>",
        '<div id="corral-errors" hidden></div>', *body,
        f'<script type="application/json" id="corral-figures">{_script_json(specs)}</script>',
        '<pre id="corral-rendered" hidden></pre>',
        f"<script>{_RENDER}</script></body></html>",
    ])
