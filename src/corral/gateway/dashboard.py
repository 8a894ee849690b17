"""The live dashboard at ``/``: one page, no assets from anywhere, polling ``/dashboard/state``.

It shows the batches with progress bars, each server's answers per second and slots in use, GPU
utilisation when ``nvidia-smi`` is on the gateway's machine, and the last errors. Everything is in
this one string (inline CSS and JavaScript, no fonts, no libraries), so it works offline and behind
any firewall. With an API key set, the page asks for it once and keeps it in the tab's
sessionStorage only.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>corral gateway</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0 0 .2em} h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{padding:.3em .6em;border-bottom:1px solid #e4e4e4;text-align:left}
th{font-weight:600;color:#555} td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{position:relative;height:1em;width:14em;background:#e8e8e8;border-radius:3px;overflow:hidden}
.bar span{position:absolute;top:0;bottom:0;left:0} .ok{background:#3a8f4c} .bad{background:#c0392b}
.status{font-weight:600} .muted{color:#888} #key{display:none;margin:1em 0}
.err td{font-family:ui-monospace,monospace;font-size:12px}
</style></head><body>
<h1>corral gateway</h1><div class="muted" id="updated">connecting...</div>
<form id="key"><label>API key: <input type="password" id="keyinput" autocomplete="off"></label>
<button>Show</button></form>
<h2>Batches</h2>
<table><thead><tr><th>batch</th><th>status</th><th>model</th><th>priority</th><th>progress</th>
<th class="num">completed</th><th class="num">failed</th><th class="num">total</th></tr></thead>
<tbody id="batches"></tbody></table>
<h2>Servers</h2>
<table><thead><tr><th>server</th><th class="num">answers/s</th><th class="num">slots in use</th>
<th class="num">ok</th><th class="num">errors</th><th>state</th></tr></thead><tbody id="servers"></tbody></table>
<h2>GPUs</h2><table><thead><tr><th>GPU</th><th>name</th><th class="num">utilisation</th>
<th class="num">memory</th></tr></thead><tbody id="gpus"></tbody></table>
<h2>Last errors</h2><table class="err"><thead><tr><th>time</th><th>batch</th><th>custom_id</th>
<th>error</th></tr></thead><tbody id="errors"></tbody></table>
<script>
"use strict";
let polls = 0;
function cell(text, cls) { const td = document.createElement("td"); td.textContent = text;
  if (cls) td.className = cls; return td; }
function row(cells, attrs) { const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c);
  for (const [k, v] of Object.entries(attrs || {})) tr.dataset[k] = String(v); return tr; }
function fill(id, rows, empty, span) { const body = document.getElementById(id);
  body.replaceChildren(...rows);
  if (!rows.length) { const td = cell(empty, "muted"); td.colSpan = span; body.appendChild(row([td])); } }
function bar(done, failed, total) { const div = document.createElement("div"); div.className = "bar";
  const t = Math.max(total, 1), ok = document.createElement("span"), bad = document.createElement("span");
  ok.className = "ok"; ok.style.width = (100 * done / t) + "%";
  bad.className = "bad"; bad.style.left = (100 * done / t) + "%"; bad.style.width = (100 * failed / t) + "%";
  div.append(ok, bad); const td = document.createElement("td"); td.appendChild(div); return td; }
function render(s) {
  fill("batches", s.batches.map(b => { const c = b.request_counts;
    return row([cell(b.id), cell(b.status, "status"), cell(b.model || ""), cell(String(b.priority)),
      bar(c.completed, c.failed, c.total), cell(String(c.completed), "num"), cell(String(c.failed), "num"),
      cell(String(c.total), "num")], {id: b.id, status: b.status, completed: c.completed,
      failed: c.failed, total: c.total}); }), "no batches yet", 8);
  fill("servers", s.servers.map(v => row([cell(v.label), cell(v.per_second.toFixed(1), "num"),
      cell(v.in_flight + " / " + v.slots, "num"), cell(String(v.ok), "num"), cell(String(v.errors), "num"),
      cell(v.benched ? "benched" : "serving")], {label: v.label, ok: v.ok, inFlight: v.in_flight,
      slots: v.slots})).concat(s.unreachable.map(u => row([cell(u), cell(""), cell(""), cell(""), cell(""),
      cell("unreachable")]))), "no servers", 6);
  fill("gpus", s.gpus.map(g => row([cell(String(g.gpu)), cell(g.name),
      cell(g.utilization == null ? "n/a" : g.utilization + "%", "num"),
      cell(g.memory_used == null ? "n/a" : g.memory_used + " / " + g.memory_total + " MiB", "num")])),
      "no GPU sampled (nvidia-smi is not on the gateway's PATH)", 4);
  fill("errors", s.errors.map(e => row([cell(new Date(e.time * 1000).toLocaleTimeString()), cell(e.batch),
      cell(e.custom_id), cell(e.error || "")])), "none", 4);
  polls += 1;
  const up = document.getElementById("updated");
  up.textContent = "updated " + new Date(s.time * 1000).toLocaleTimeString() + " \\u00b7 " +
    s.engine.sent + " requests sent, " + s.engine.cached + " from the journal, " +
    s.engine.in_flight + " in flight";
  up.dataset.polls = String(polls);
}
async function poll() {
  const key = sessionStorage.getItem("corral-key");
  try {
    const r = await fetch("/dashboard/state", {headers: key ? {"Authorization": "Bearer " + key} : {}});
    if (r.status === 401) { document.getElementById("key").style.display = "block"; return; }
    render(await r.json());
  } catch (e) { document.getElementById("updated").textContent = "gateway unreachable: " + e; }
  finally { setTimeout(poll, 1000); }
}
document.getElementById("key").addEventListener("submit", ev => { ev.preventDefault();
  sessionStorage.setItem("corral-key", document.getElementById("keyinput").value);
  document.getElementById("key").style.display = "none"; });
poll();
</script></body></html>
"""
