"""`corral bench`, `batch_benchmark`, `corral run --auto-tune` and GPU monitoring, on fake servers.

The fakes hold each request for a fixed time in one of ``slots`` slots. Which concurrency is the
knee is measured, so it moves on a busy machine: the tests check that every figure agrees with the
others (JSON, CSV, terminal, tuned config, report page) and what the fakes received, and
``find_knee`` on fixed numbers. Nothing here asserts a speed; benchmarks/autotune.py measures those.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sqlite3
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from corral.bench.sweep import find_knee
from corral.config import load_config
from tests.conftest import corral, read_jsonl, write_jsonl

OLLAMA_MANAGER_KEYS = {"model", "latency", "tokens_per_sec", "prompt", "response", "num_runs", "error"}

FAKE_SMI = """#!{python}
import sys
args = " ".join(sys.argv[1:])
assert "--query-gpu=index,name,utilization.gpu,memory.used,memory.total" in args, args
print("0, Fake L40S, 87, 30210, 46068")
print("1, Fake L40S, 12, 1024, 46068")
"""


@pytest.fixture
def fake_gpu_path(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH starts with a fake ``nvidia-smi`` printing two GPUs."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(FAKE_SMI.format(python=sys.executable))
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "CORRAL_GPU_INTERVAL": "0.2"}


def no_gpu_env(tmp_path: Path) -> dict[str, str]:
    """PATH without any nvidia-smi (the test machine has none; make sure of it)."""
    keep = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "nvidia-smi").exists()]
    return {"PATH": os.pathsep.join(keep)}


def test_find_knee() -> None:
    assert find_knee([(1, 10.0), (2, 20.0), (4, 39.5), (8, 40.0), (16, 40.5)]) == 4
    assert find_knee([(1, 10.0), (2, 20.0), (4, 39.5), (8, 40.0), (16, 40.5)], tolerance=0.0) == 16
    assert find_knee([(1, 10.0), (2, 20.0), (4, 30.0), (8, 25.0)]) == 4   # overload hurts: best is the knee
    assert find_knee([(2, 5.0), (1, 5.0)]) == 1
    assert find_knee([]) is None and find_knee([(1, 0.0)]) is None


def test_tune_levels() -> None:
    from corral.bench.tune import tune_levels

    assert tune_levels(16, 8) == [8, 6, 4]        # llama.cpp's slots from /props, not 2 x them
    assert tune_levels(8, None) == [8, 4, 2]      # Ollama's default start, or a configured 8
    assert tune_levels(16, None) == [16, 8, 4]
    assert tune_levels(2, 1) == [1] and tune_levels(1, None) == [1]


def _two_server_config(tmp_path: Path, ollama_url: str, openai_url: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(f'model = "llama3.2"\n\n[[servers]]\nurl = "{ollama_url}"\napi = "ollama"\n\n'
                    f'[[servers]]\nurl = "{openai_url}"\napi = "openai"\nname = "vllm"\n', encoding="utf-8")
    return path


def test_bench_measures_sweeps_writes_config_and_figures(tmp_path: Path, fake_ollama_factory,
                                                         fake_gpu_path: dict[str, str]) -> None:
    ollama = fake_ollama_factory(slots=2, latency=0.1)
    vllm = fake_ollama_factory(api="openai", slots=4, latency=0.1)
    ollama.cold_load = 3.5  # the first request loads the model
    config = _two_server_config(tmp_path, ollama.url, vllm.url)
    done = corral("bench", "--config", str(config), "--models", "llama3.2", "--prompt",
                  "Explain what a neural network is.", "--runs", "3", "--sweep", "1,2,4,8",
                  "--write-config", "tuned.toml", "--json", "figures.json", "--csv", "figures.csv",
                  "--store", "bench.db", cwd=tmp_path, env=fake_gpu_path, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())

    # Per model and server: OllamaManager's keys with their meanings, and the streamed figures.
    by_server = {m["server"]: m for m in figures["models"]}
    assert set(by_server) == {ollama.url.split("//")[1], "vllm"}
    for row in by_server.values():
        assert OLLAMA_MANAGER_KEYS <= set(row)
        assert row["model"] == "llama3.2" and row["num_runs"] == 3 and row["ok"] == 3
        assert row["error"] is None and row["prompt"] == "Explain what a neural network is."
        assert row["response"] == "echo: Explain what a neural network is."
        # Timed figures are checked for consistency with each other, never against a clock.
        assert len(row["latencies"]) == 3 and all(x > 0 for x in row["latencies"])
        assert row["latency"] == pytest.approx(sum(row["latencies"]) / 3, abs=1e-3)
        assert row["ttft"] > 0 and row["latency_p50"] <= row["latency_p95"]
    olla = by_server[ollama.url.split("//")[1]]
    # Ollama: eval_count / eval_duration as the fake reports them (1 ms + 8 ms per token).
    per_run = olla["tokens"] // 3
    assert olla["tokens_per_sec"] == pytest.approx(per_run / ((1e6 + 8e6 * per_run) / 1e9), rel=1e-3)
    assert olla["prompt_tokens_per_sec"] > 0
    assert olla["load_time"] == pytest.approx(3.5) and olla["cold_start"] is True
    vl = by_server["vllm"]
    assert vl["load_time"] is None and vl["load_time_reported"] is False   # OpenAI servers say nothing
    assert vl["prompt_tokens_per_sec"] is None and vl["tokens_per_sec"] > 0

    # The sweep: every level of every server ran and was answered. Which level is the knee depends on
    # measured throughput (find_knee is checked on fixed numbers above); here the knee the JSON holds
    # must be the one the terminal, the tuned config and the CSV give.
    sweeps = {s["server"]: s for s in figures["sweeps"]}
    assert set(sweeps) == {olla["server"], "vllm"}
    for sweep in sweeps.values():
        assert [lv["concurrency"] for lv in sweep["levels"]] == [1, 2, 4, 8]
        assert all(lv["ok"] == lv["requests"] > 0 for lv in sweep["levels"])
        assert sweep["knee"] in (1, 2, 4, 8)
        assert f"knee {sweep['knee']} in flight" in done.stdout
    # What was sent: the fakes never ran more at once than their slots, and each got every request.
    assert ollama.max_in_flight <= 2 and vllm.max_in_flight <= 4
    assert ollama.completed == len(ollama.requests) and vllm.completed == len(vllm.requests)

    # The tuned cluster file is a config corral reads, with each knee as max_concurrency.
    tuned = load_config(tmp_path / "tuned.toml")
    assert tuned.model == "llama3.2"
    assert [(s.url, s.api, s.max_concurrency) for s in tuned.servers] == [
        (ollama.url, "ollama", sweeps[olla["server"]]["knee"]), (vllm.url, "openai", sweeps["vllm"]["knee"])]

    # GPU series: in the store, in the figures and in the terminal summary.
    db = sqlite3.connect(tmp_path / "bench.db")
    samples = db.execute("SELECT gpu, name, utilization, memory_used, memory_total FROM gpu_samples").fetchall()
    assert {s[0] for s in samples} == {0, 1} and len(samples) >= 4
    assert (0, "Fake L40S", 87.0, 30210.0, 46068.0) in samples
    gpus = {g["gpu"]: g for g in figures["gpu"]}
    assert gpus[0]["utilization_mean"] == 87.0 and gpus[1]["memory_used_max"] == 1024
    assert "GPU utilisation" in done.stdout and "Fake L40S" in done.stdout
    assert "no nvidia-smi" not in done.stderr

    # CSV: every figure, one row per model and server, per sweep level, per GPU sample.
    rows = list(csv.DictReader((tmp_path / "figures.csv").open()))
    kinds = [r["kind"] for r in rows]
    assert kinds.count("model") == 2 and kinds.count("sweep") == 8 and kinds.count("gpu") == len(samples)
    knees = {(r["server"], r["concurrency"]) for r in rows if r["kind"] == "sweep" and r["is_knee"] == "True"}
    assert knees == {(server, str(sweep["knee"])) for server, sweep in sweeps.items()}


def test_bench_without_gpu_says_so_in_one_line(tmp_path: Path, fake_ollama) -> None:
    done = corral("bench", "-s", fake_ollama.url, "-m", "llama3.2,nosuchmodel", "--runs", "2",
                  "--json", "f.json", cwd=tmp_path, env=no_gpu_env(tmp_path))
    assert done.returncode == 1  # a model was on no server: reported, the other measured
    assert done.stderr.count("no nvidia-smi on PATH; GPU monitoring off") == 1
    figures = json.loads((tmp_path / "f.json").read_text())
    by_model = {m["model"]: m for m in figures["models"]}
    assert by_model["llama3.2"]["ok"] == 2 and by_model["llama3.2"]["error"] is None
    assert by_model["nosuchmodel"]["error"] == "model 'nosuchmodel' is on no reachable server"
    assert figures["gpu"] == [] and figures["gpu_note"]


def test_batch_benchmark_returns_ollama_manager_results(fake_ollama_factory) -> None:
    import corral as corral_api

    server = fake_ollama_factory(latency=0.02)
    results = corral_api.batch_benchmark(models=["llama3.2", "gemma3:4b"], prompt="Hello there", num_runs=2,
                                         servers=[server.url], temperature=0)
    assert list(results) == ["llama3.2", "gemma3:4b"]
    ok = results["llama3.2"]
    assert OLLAMA_MANAGER_KEYS <= set(ok)
    assert ok["model"] == "llama3.2" and ok["num_runs"] == 2 and ok["prompt"] == "Hello there"
    assert ok["response"] == "echo: Hello there" and ok["error"] is None
    assert ok["latency"] > 0 and ok["tokens_per_sec"] > 0
    missing = results["gemma3:4b"]
    assert missing["error"] and missing["latency"] is None and missing["tokens_per_sec"] is None
    # OllamaManager's own loop works on the result.
    ranked = sorted(((m, r) for m, r in results.items() if r["latency"] is not None), key=lambda x: x[1]["latency"])
    assert ranked[0][0] == "llama3.2"
    # Every request was streamed, with the options sent.
    bodies = [body for path, body in server.requests if path == "/api/chat"]
    assert len(bodies) == 2 and all(b["stream"] is True and b["options"] == {"temperature": 0} for b in bodies)

    async def inside_a_loop() -> dict[str, Any]:  # Jupyter: the sync wrapper inside a running loop
        return corral_api.batch_benchmark(["llama3.2"], num_runs=1, servers=[server.url])

    assert asyncio.run(inside_a_loop())["llama3.2"]["prompt"] == "Hello, how are you?"  # seed's default


def test_openai_stream_counts_and_first_token(fake_ollama_factory) -> None:
    """Streaming over the OpenAI wire format: usage from the last event, text joined from deltas."""
    import corral as corral_api

    server = fake_ollama_factory(api="openai", llamacpp=True, latency=0.01)
    result = corral_api.batch_benchmark(["llama3.2"], "one two three four", 1, servers=[server.url],
                                        api="openai", num_predict=3)
    row = result["llama3.2"]
    assert row["response"] == "echo: one two"      # cut at 3 tokens, joined from the stream's pieces
    assert row["tokens"] == 3 and row["ttft"] is not None
    body = [b for p, b in server.requests if p == "/v1/chat/completions"][0]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 3


def test_run_gpu_monitor_stores_and_summarises(tmp_path: Path, fake_ollama_factory,
                                               fake_gpu_path: dict[str, str]) -> None:
    server = fake_ollama_factory(slots=4, latency=0.05)
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"q{i}"} for i in range(40)])
    done = corral("run", "p.jsonl", "-s", server.url, "-m", "llama3.2", "--gpu-monitor", "-o", "out.jsonl",
                  cwd=tmp_path, env=fake_gpu_path)
    assert done.returncode == 0, done.stderr
    db = sqlite3.connect(tmp_path / "out.jsonl.corral.db")
    run_id = db.execute("SELECT MAX(id) FROM runs").fetchone()[0]
    per_gpu = dict(db.execute("SELECT gpu, COUNT(*) FROM gpu_samples WHERE run_id = ? GROUP BY gpu", (run_id,)))
    assert set(per_gpu) == {0, 1} and per_gpu[0] >= 2
    assert "GPU utilisation" in done.stderr and "Fake L40S" in done.stderr and "87.0" in done.stderr

    off = corral("run", "p.jsonl", "-s", server.url, "-m", "llama3.2", "--no-gpu-monitor", "-o", "off.jsonl",
                 cwd=tmp_path, env=fake_gpu_path)
    assert off.returncode == 0, off.stderr
    assert sqlite3.connect(tmp_path / "off.jsonl.corral.db").execute(
        "SELECT COUNT(*) FROM gpu_samples").fetchone()[0] == 0
    assert "GPU utilisation" not in off.stderr

    none = corral("run", "p.jsonl", "-s", server.url, "-m", "llama3.2", "--gpu-monitor", "-o", "none.jsonl",
                  cwd=tmp_path, env=no_gpu_env(tmp_path))
    assert none.returncode == 0, none.stderr
    assert none.stderr.count("corral: no nvidia-smi on PATH; GPU monitoring off") == 1
    assert len(read_jsonl(tmp_path / "none.jsonl")) == 40


def test_run_auto_tune_sweeps_down_and_keeps_the_sweeps_answers(tmp_path: Path, fake_ollama_factory) -> None:
    """A server with 4 slots, configured for 8: the sweep starts at 8 in flight (two waves: 16 rows) and
    halves (one wave each) while that is no slower, within its 40% of 60 rows; the job starts at one of
    the swept levels. Where it stops depends on measured speed, so this checks what is counted: every
    row answered once, the sweep's answers taken from the store, none asked twice."""
    server = fake_ollama_factory(slots=4, latency=0.3)  # long next to the client's overhead per level
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"question {i}"} for i in range(60)])
    config = tmp_path / "c.toml"
    config.write_text(f'[[servers]]\nurl = "{server.url}"\nmax_concurrency = 8\n', encoding="utf-8")
    done = corral("run", "p.jsonl", "--config", str(config), "-m", "llama3.2", "--auto-tune",
                  "-o", "out.jsonl", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    picked = [line for line in done.stderr.splitlines() if "auto-tune:" in line and "in flight" in line]
    assert len(picked) == 1 and f"{server.url.split('//')[1]}: " in picked[0], done.stderr
    chosen = int(picked[0].split(f"{server.url.split('//')[1]}: ")[1].split(" in flight")[0])
    swept = [int(level.split(":")[0]) for level in picked[0].split("(swept ")[1].split(", ")]
    assert swept[0] == 8 and all(b == a // 2 for a, b in zip(swept, swept[1:])) and chosen in swept
    from_sweep = 2 * swept[0] + sum(swept[1:])  # two waves at the first level, one at each other
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["prompt"] for r in rows] == [f"question {i}" for i in range(60)]
    assert all(r["success"] for r in rows)
    sent = server.count_by_prompt()
    assert set(sent) == {f"question {i}" for i in range(60)} and max(sent.values()) == 1  # none asked twice
    assert sum(1 for r in rows if r["cached"]) == from_sweep
    assert f"{from_sweep} from the store" in done.stderr and f"its {from_sweep} answers are kept" in done.stderr
    assert [r["prompt"] for r in rows if r["cached"]] == [f"question {i}" for i in range(from_sweep)]


def test_auto_tune_and_concurrency_exclude_each_other(tmp_path: Path, fake_ollama) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    done = corral("run", "p.jsonl", "-s", fake_ollama.url, "-m", "llama3.2", "--auto-tune", "-j", "4",
                  "-o", "out.jsonl", cwd=tmp_path)
    assert done.returncode == 2 and "--auto-tune" in done.stderr


def test_bench_report_renders_in_chromium(tmp_path: Path, fake_ollama_factory,
                                          fake_gpu_path: dict[str, str]) -> None:
    """The HTML report opens offline in headless Chromium and draws the three plots from the figures."""
    from tests.test_report import console_messages, open_in_chromium, rendered_figures

    a = fake_ollama_factory(slots=2, latency=0.05)
    b = fake_ollama_factory(slots=4, latency=0.05)
    done = corral("bench", "-s", a.url, "-s", b.url, "-m", "llama3.2", "--runs", "4", "--sweep", "1,2,4,8",
                  "--report", "bench.html", "--json", "figures.json", cwd=tmp_path, env=fake_gpu_path,
                  timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "figures.json").read_text())
    page = tmp_path / "bench.html"
    dom, log = open_in_chromium(page, tmp_path / "bench.png")
    assert console_messages(log) == []
    assert '<div id="corral-errors" hidden=""></div>' in dom, "the page reported an error"
    drawn = rendered_figures(dom)
    assert set(drawn) == {"fig-sweep", "fig-model-latency", "fig-gpu"}
    assert all(f["svg"] >= 1 for f in drawn.values())
    # Throughput vs concurrency: one line per server with the sweep's own figures, plus its knee.
    for sweep in figures["sweeps"]:
        line = next(t for t in drawn["fig-sweep"]["traces"] if t["name"] == sweep["server"])
        assert line["x"] == [1, 2, 4, 8]
        assert line["y"] == pytest.approx([lv["tokens_per_sec"] for lv in sweep["levels"]], rel=1e-3)
        star = next(t for t in drawn["fig-sweep"]["traces"] if t["name"] == f"knee {sweep['server']}")
        assert star["x"] == [sweep["knee"]]
    assert sorted(t["name"] for t in drawn["fig-sweep"]["traces"]) == sorted(
        [s["server"] for s in figures["sweeps"]] + [f"knee {s['server']}" for s in figures["sweeps"]])
    # Latency distribution per model: every run of every model/server pair.
    boxes = {t["name"]: t["y"] for t in drawn["fig-model-latency"]["traces"]}
    for model in figures["models"]:
        assert boxes[f"{model['model']} @ {model['server']}"] == pytest.approx(model["latencies"], abs=1e-4)
    # GPU utilisation over time, per GPU, as the fake nvidia-smi printed it.
    gpus = {t["name"]: t["y"] for t in drawn["fig-gpu"]["traces"]}
    assert set(gpus) == {"GPU 0 Fake L40S", "GPU 1 Fake L40S"}
    assert set(gpus["GPU 0 Fake L40S"]) == {87} and set(gpus["GPU 1 Fake L40S"]) == {12}
    assert "Fake L40S" in dom and "knee" in dom
