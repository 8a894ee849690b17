"""`corral bench` and `corral run --auto-tune` on the real embedded llama.cpp server (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from corral.config import load_config
from tests.conftest import corral, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow


def test_bench_local_measures_streams_and_finds_a_knee(tmp_path: Path) -> None:
    done = corral("bench", "--local", "--parallel", "4", "--prompt", "Explain what a neural network is.",
                  "--runs", "2", "--max-tokens", "24", "--temperature", "0", "--sweep", "1,2,4",
                  "--waves", "2", "--json", "f.json", "--write-config", "tuned.toml", cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    figures = json.loads((tmp_path / "f.json").read_text())
    [model] = figures["models"]
    assert model["model"] == "smollm2" and model["ok"] == 2 and model["error"] is None
    assert model["response"] and 0 < model["ttft"] < model["latency"]
    assert model["tokens"] == 2 * 24            # usage from the stream's last event
    assert model["tokens_per_sec"] > 0 and model["prompt_tokens_per_sec"] > 0   # llama.cpp's timings
    assert model["load_time"] is None and model["load_time_reported"] is False
    [sweep] = figures["sweeps"]
    assert [lv["concurrency"] for lv in sweep["levels"]] == [1, 2, 4]
    assert all(lv["ok"] == lv["requests"] for lv in sweep["levels"])
    assert sweep["knee"] in (1, 2, 4)
    assert load_config(tmp_path / "tuned.toml").servers[0].max_concurrency == sweep["knee"]


def test_run_auto_tune_local(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"({i}) Name a colour."} for i in range(30)])
    done = corral("run", "p.jsonl", "--local", "--auto-tune", "--max-tokens", "16", "--temperature", "0",
                  "-o", "out.jsonl", cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "auto-tune: local:" in done.stderr and "in flight" in done.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 30 and all(r["success"] for r in rows)
    assert sum(r["cached"] for r in rows) >= 2   # the sweep's answers, kept
