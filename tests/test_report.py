"""`corral report`: one self-contained HTML page, checked in headless Chromium against the store."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from corral.store import SCHEMA_VERSION, Store
from tests.conftest import corral, write_jsonl

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def open_in_chromium(page: Path, screenshot: Path) -> tuple[str, str]:
    """The DOM once the page's scripts ran, and Chromium's log; a screenshot is saved too.

    The network is pointed at a closed port: a page that needed anything from outside would log
    a failed load."""
    assert CHROMIUM, "Debian's chromium is needed: `make install` installs it"
    profile = page.parent / "chromium-profile"
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-extensions", "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}",
            "--virtual-time-budget=15000"]
    dom = subprocess.run([*base, "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    shot = subprocess.run([*base, f"--screenshot={screenshot}", "--window-size=1280,5200",
                           "--hide-scrollbars", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert shot.returncode == 0, shot.stderr[-2000:]
    return dom.stdout, dom.stderr


def rendered_figures(dom: str) -> dict[str, Any]:
    """What the page says it drew: per figure, its SVG count and each trace's data."""
    match = re.search(r'<pre id="corral-rendered"[^>]*>(.*?)</pre>', dom, re.S)
    assert match and match.group(1), "the page did not finish drawing its figures"
    return json.loads(html.unescape(match.group(1)))


def console_messages(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def trace(figures: dict[str, Any], figure: str, name: str) -> dict[Any, Any]:
    found = [t for t in figures[figure]["traces"] if t["name"] == name]
    assert found, f"{figure} has no trace {name!r}"
    return dict(zip(found[0]["x"], found[0]["y"]))


def _slow_for_slow_prompts(body: dict[str, Any]) -> float:
    return 3.0 if "very slow" in json.dumps(body) else 0.01


def test_report_opens_in_chromium_and_its_figures_match_the_store(tmp_path: Path,
                                                                  fake_ollama_factory) -> None:
    fast = fake_ollama_factory(slots=4, latency=_slow_for_slow_prompts)
    flaky = fake_ollama_factory(slots=2, latency=_slow_for_slow_prompts)
    flaky.fail_next(4, status=503)  # retried: attempts > 1 for some rows
    rows: list[dict[str, Any]] = [{"prompt": f"question {i} " + "word " * (i % 7)} for i in range(40)]
    rows += [{"prompt": "bad option", "options": {"num_predict": "many"}},       # 400: http, not retried
             {"prompt": "bad option too", "options": {"num_predict": "lots"}},
             {"prompt": "a very slow question"}]                                 # times out twice
    write_jsonl(tmp_path / "prompts.jsonl", rows)
    run = corral("run", "prompts.jsonl", "-s", fast.url, "-s", flaky.url, "-m", "llama3.2",
                 "--temperature", "0", "--seed", "1", "--timeout", "0.5", "--max-attempts", "2",
                 "-o", "out.jsonl", cwd=tmp_path, timeout=180)
    assert run.returncode == 1, run.stderr  # three rows failed, and say so
    assert "3 row(s) failed" in run.stderr

    made = corral("report", "out.jsonl", "-o", "report.html", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    page = tmp_path / "report.html"
    markup = re.sub(r"<script.*?</script>", "", page.read_text(encoding="utf-8"), flags=re.S)
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", markup), "the page loads something"

    dom, log = open_in_chromium(page, tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 20_000
    assert console_messages(log) == []
    assert re.search(r'<div id="corral-errors" hidden=""></div>', dom), "the page reported an error"
    figures = rendered_figures(dom)
    assert set(figures) == {"fig-throughput", "fig-servers", "fig-latency", "fig-errors", "fig-attempts",
                            "fig-tokens"}
    assert all(f["svg"] >= 1 for f in figures.values())
    assert f'data-rendered="{len(figures)}"' in dom

    db = sqlite3.connect(tmp_path / "out.jsonl.corral.db")
    by_server = db.execute("SELECT server, status, COUNT(*) FROM results GROUP BY 1, 2").fetchall()
    ok = {s: n for s, status, n in by_server if status == "ok"}
    failed = {s: n for s, status, n in by_server if status == "failed"}
    assert trace(figures, "fig-servers", "ok") == {s: ok.get(s, 0) for s in {*ok, *failed}}
    assert trace(figures, "fig-servers", "failed") == {s: failed.get(s, 0) for s in {*ok, *failed}}
    assert sum(ok.values()) == 40 and sum(failed.values()) == 3
    errors = dict(db.execute("SELECT error_kind, COUNT(*) FROM results WHERE status = 'failed' GROUP BY 1"))
    assert errors == {"http": 2, "timeout": 1}
    assert trace(figures, "fig-errors", "failed rows") == errors
    attempts = {str(a): n for a, n in db.execute("SELECT attempts, COUNT(*) FROM results GROUP BY 1")}
    assert trace(figures, "fig-attempts", "rows") == attempts
    assert any(int(a) > 1 for a in attempts)
    tokens = db.execute("SELECT server, SUM(prompt_eval_count), SUM(eval_count) FROM results "
                        "WHERE server IS NOT NULL GROUP BY 1").fetchall()
    assert trace(figures, "fig-tokens", "prompt tokens") == {s: p or 0 for s, p, _ in tokens}
    assert trace(figures, "fig-tokens", "completion tokens") == {s: c or 0 for s, _, c in tokens}
    throughput = figures["fig-throughput"]["traces"]
    assert sum(sum(t["customdata"]) for t in throughput) == 43
    assert {t["name"] for t in trace_list(figures, "fig-latency")} == set(ok)
    # The numbers in the summary and the example rows of each error kind.
    assert re.search(r'id="card-ok"><b>40</b>', dom) and re.search(r'id="card-failed"><b>3</b>', dom)
    assert "bad option" in dom and "timed out" in dom
    assert "Manifest of the run that produced the data" in dom and "/api/tags" in dom


def trace_list(figures: dict[str, Any], figure: str) -> list[dict[str, Any]]:
    return figures[figure]["traces"]


def test_fanout_report_has_agreement_tables_and_confusion_heatmaps(tmp_path: Path,
                                                                    fake_ollama_factory) -> None:
    def label(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        model = body["model"].split(":")[0]
        number = int(re.search(r"item (\d+)", text).group(1))  # type: ignore[union-attr]
        if model == "mistral" and number % 4 == 0:  # disagrees on 6 of 24 rows
            return json.dumps({"label": "pos"})
        return json.dumps({"label": "pos" if number % 2 else "neg"})

    server = fake_ollama_factory(models=("llama3.2", "mistral"), slots=4, responder=label)
    pd.DataFrame({"text": [f"item {i}" for i in range(24)]}).to_csv(tmp_path / "items.csv", index=False)
    run = corral("analyze", "items.csv", "--text-column", "text", "--json-keys", "label",
                 "--models", "llama3.2,mistral", "--fanout", "-s", server.url, "-o", "labelled.csv",
                 cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "labelled.csv.manifest.json").read_text())
    pairs = manifest["agreement"]["keys"]["label"]["pairs"]
    assert pairs[0]["n"] == 24 and pairs[0]["percent_agreement"] == pytest.approx(100 * 18 / 24)

    made = corral("report", "labelled.csv", "-o", "report.html", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    dom, log = open_in_chromium(tmp_path / "report.html", tmp_path / "report.png")
    assert console_messages(log) == []
    figures = rendered_figures(dom)
    heatmap = figures["fig-confusion-0-0"]["traces"][0]
    out = pd.read_csv(tmp_path / "labelled.csv")
    expected = pd.crosstab(out["label_llama3.2"], out["label_mistral"])
    assert heatmap["x"] == list(expected.columns) and heatmap["y"] == list(expected.index)
    assert heatmap["z"] == expected.to_numpy().tolist()
    assert "Agreement between models" in dom and "75.0%" in dom and "Krippendorff" in dom


def test_gpu_utilisation_is_sampled_and_plotted(tmp_path: Path, fake_ollama) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_smi = bin_dir / "nvidia-smi"  # what `nvidia-smi --query-gpu=... --format=csv,noheader,nounits` prints
    fake_smi.write_text("#!/bin/sh\necho '0, NVIDIA A100-SXM4-40GB, 87, 30210, 40960'\n"
                        "echo '1, NVIDIA A100-SXM4-40GB, [N/A], 1024, 40960'\n")
    fake_smi.chmod(0o755)
    fake_ollama.latency = 0.02
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(30)])
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CORRAL_GPU_INTERVAL": "0.05"}
    run = corral("run", "p.jsonl", "-s", fake_ollama.url, "-m", "llama3.2", "-j", "2", "-o", "out.jsonl",
                 cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    assert manifest["gpus"] == [{"index": 0, "name": "NVIDIA A100-SXM4-40GB"},
                                {"index": 1, "name": "NVIDIA A100-SXM4-40GB"}]
    samples = sqlite3.connect(tmp_path / "out.jsonl.corral.db").execute(
        "SELECT gpu, utilization, memory_used FROM gpu_samples").fetchall()
    assert len(samples) >= 4 and (0, 87.0, 30210.0) in samples and (1, None, 1024.0) in samples

    made = corral("report", "out.jsonl.corral.db", "-o", "report.html", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    figures = json.loads(_figures_json(tmp_path / "report.html"))
    util = [t for t in figures["fig-gpu"]["data"] if t["name"].startswith("GPU 0")][0]
    assert set(util["y"]) == {87}


def _figures_json(page: Path) -> str:
    match = re.search(r'<script type="application/json" id="corral-figures">(.*?)</script>',
                      page.read_text(encoding="utf-8"), re.S)
    assert match
    return match.group(1)


def test_report_of_a_store_from_before_manifests(tmp_path: Path) -> None:
    """A journal written by corral 0.1 (runs without a manifest column) still opens, resumes, reports."""
    path = tmp_path / "old.corral.db"
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
        INSERT INTO meta VALUES ('schema_version', '1');
        CREATE TABLE runs (id INTEGER PRIMARY KEY, started_at REAL, finished_at REAL, argv TEXT,
                           info TEXT, counts TEXT);
        CREATE TABLE results (key TEXT PRIMARY KEY, status TEXT NOT NULL, model TEXT, endpoint TEXT,
            request TEXT, response TEXT, embeddings BLOB, raw TEXT, error TEXT, error_kind TEXT,
            status_code INTEGER, attempts INTEGER, server TEXT, prompt_eval_count INTEGER,
            eval_count INTEGER, eval_duration INTEGER, prompt_eval_duration INTEGER,
            total_duration INTEGER, load_duration INTEGER, done_reason TEXT, latency REAL,
            started_at REAL, finished_at REAL, run_id INTEGER);
    """)
    now = time.time()
    db.execute("INSERT INTO runs VALUES (1, ?, ?, '[\"corral\"]', '{}', '{\"sent\": 2, \"retries\": 1}')",
               (now - 5, now))
    for i, status in enumerate(("ok", "failed")):
        db.execute("INSERT INTO results (key, status, model, request, error, error_kind, attempts, server, "
                   "prompt_eval_count, eval_count, latency, started_at, finished_at, run_id) "
                   "VALUES (?, ?, 'llama3.2', '{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}', "
                   "?, ?, ?, 'gpu1', 3, 4, 0.5, ?, ?, 1)",
                   (f"k{i}", status, None if status == "ok" else "HTTP 400", None if status == "ok" else "http",
                    1 + i, now - 2, now - 1))
    db.commit()
    db.close()
    made = corral("report", "old.corral.db", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    page = (tmp_path / "old.corral.db.report.html").read_text(encoding="utf-8")
    assert "No manifest in this store" in page
    figures = json.loads(_figures_json(tmp_path / "old.corral.db.report.html"))
    assert figures["fig-servers"]["data"][0]["y"] == [1] and figures["fig-errors"]["data"][0]["x"] == ["http"]
    # The report only reads (it may run beside a job); a writer opening the store upgrades it in place.
    with Store(path) as store:
        assert store.query("SELECT value FROM meta WHERE key = 'schema_version'") == [(str(SCHEMA_VERSION),)]
        assert ("manifest",) in [(r[1],) for r in store.query("PRAGMA table_info(runs)")]


def test_report_errors_are_one_clear_line(tmp_path: Path) -> None:
    missing = corral("report", "nothing.jsonl", cwd=tmp_path)
    assert missing.returncode == 2
    assert "no corral store here or beside it" in missing.stderr
    assert "Traceback" not in missing.stderr
