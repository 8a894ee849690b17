"""Running a fleet for a day, outside the scheduler: `corral status` and `corral report` beside a
running job, hosted endpoints' keys and prices, ollama-batch-cluster's habits, and OpenAI Batch files
run line by line as vLLM's run-batch does. Through the CLI, on fake servers."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from .conftest import corral, read_jsonl, start_corral, wait_for, write_jsonl, write_prompts

FAST_STATUS = {"CORRAL_STATUS_INTERVAL": "0.1"}


def _status(target: str, cwd: Path) -> tuple[int, dict[str, Any]]:
    done = corral("status", target, "--json", cwd=cwd, env=FAST_STATUS)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout.splitlines()[-1])


def test_status_and_report_from_another_shell_while_a_run_goes_on(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=2, latency=0.3)
    write_prompts(tmp_path / "p.jsonl", 60)
    server.fail_next(2, status=400)  # two rows fail at once (not retried): the last errors
    args = ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl", "--no-hedge"]
    run = start_corral(args, tmp_path, env=FAST_STATUS)
    try:
        db = tmp_path / "out.jsonl.corral.db"
        wait_for(lambda: db.exists() and _status("out.jsonl", tmp_path)[1].get("done", 0) >= 4, 60,
                 "a few rows done")
        code, live = _status("out.jsonl", tmp_path)
        assert code == 0 and live["state"] == "running" and live["alive"] is True
        assert live["pid"] == run.pid and live["total"] == 60 and 4 <= live["done"] < 60
        assert [(e["kind"], "HTTP 400" in e["error"]) for e in live["last_errors"]] == [("http", True)] * 2
        (srv,) = live["servers"]
        assert srv["label"] == f"127.0.0.1:{server.port}" and srv["slots"] >= 1 and srv["ok"] >= 2
        assert live["journal_rows"]["ok"] >= 2 and live["journal_rows"]["failed"] == 2

        text = corral("status", "out.jsonl", cwd=tmp_path)
        assert text.returncode == 0 and f"pid {run.pid}" in text.stdout and "(alive)" in text.stdout
        assert "/60 done" in text.stdout and "last errors:" in text.stdout

        # The report is a snapshot of the running job; the job goes on undisturbed.
        made = corral("report", "out.jsonl", "-o", "live.html", cwd=tmp_path)
        if made.returncode != 0 and "plotly" in made.stderr:
            pytest.skip("the report extra is not installed")
        assert made.returncode == 0, made.stderr
        assert 'id="live-note"' in (tmp_path / "live.html").read_text()
        assert run.poll() is None

        # A manifest read mid-run has counts (refreshed every 10 snapshots), not null.
        wait_for(lambda: json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["counts"] is not None,
                 30, "the manifest's counts")

        run.send_signal(signal.SIGKILL)  # killed without a word: the status says so
        run.wait(timeout=30)
        code, dead = _status("out.jsonl", tmp_path)
        assert code == 1 and dead["state"] == "running" and dead["alive"] is False
        assert "stopped without finishing" in dead["summary"]
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()

    server.latency = 0.0
    again = corral(*args, cwd=tmp_path)
    assert again.returncode == 1  # the two failed rows stay failed
    code, final = _status("out.jsonl.corral.db", tmp_path)
    assert code == 0 and final["state"] == "complete" and final["alive"] is False
    assert final["done"] == 60 and final["in_flight"] == 0

    watched = corral("status", "out.jsonl", "--watch", "--interval", "0.1", cwd=tmp_path)
    assert watched.returncode == 0 and watched.stdout.count("run 2: complete") == 1  # ends with the run


def test_status_of_a_missing_journal_is_one_line(tmp_path: Path) -> None:
    done = corral("status", "nothing.jsonl", cwd=tmp_path)
    assert done.returncode == 2 and "no corral store here" in done.stderr and "Traceback" not in done.stderr


def test_api_key_env_and_openai_api_key_reach_hosted_servers(tmp_path: Path, fake_ollama_factory) -> None:
    hosted = fake_ollama_factory(api="openai", api_key="sk-secret-1")
    write_prompts(tmp_path / "p.jsonl", 3)
    refused = corral("run", "p.jsonl", "--server", hosted.url, "--api", "openai", "-m", "llama3.2",
                     "-o", "a.jsonl", cwd=tmp_path, env={"OPENAI_API_KEY": ""})
    assert refused.returncode == 2 and "--api-key-env NAME, or OPENAI_API_KEY" in refused.stderr

    named = corral("run", "p.jsonl", "--server", hosted.url, "--api", "openai", "-m", "llama3.2",
                   "-o", "b.jsonl", "--api-key-env", "MY_KEY", cwd=tmp_path, env={"MY_KEY": "sk-secret-1"})
    assert named.returncode == 0, named.stderr

    default = corral("run", "p.jsonl", "--server", hosted.url, "--api", "openai", "-m", "llama3.2",
                     "-o", "c.jsonl", cwd=tmp_path, env={"OPENAI_API_KEY": "sk-secret-1"})
    assert default.returncode == 0, default.stderr
    for name in ("b.jsonl.manifest.json", "c.jsonl.manifest.json", "b.jsonl", "c.jsonl"):
        assert "sk-secret-1" not in (tmp_path / name).read_text()
    manifest = json.loads((tmp_path / "b.jsonl.manifest.json").read_text())
    assert manifest["servers"][0]["spec"]["api_key_env"] == "MY_KEY"


def test_prices_give_a_cost_per_server_in_summary_manifest_and_report(tmp_path: Path, fake_ollama_factory) -> None:
    a, b = fake_ollama_factory(), fake_ollama_factory()
    (tmp_path / "fleet.toml").write_text(
        f'model = "llama3.2"\n[[servers]]\nurl = "{a.url}"\nprice_in = 1.5\nprice_out = 6\n'
        f'[[servers]]\nurl = "{b.url}"\n')
    write_prompts(tmp_path / "p.jsonl", 20)
    done = corral("run", "p.jsonl", "--config", "fleet.toml", "-o", "out.jsonl", "--progress", "log",
                  cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "cost" in done.stderr
    manifest = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())
    priced = {s["label"]: s for s in manifest["per_server"]}
    pa = priced[f"127.0.0.1:{a.port}"]
    assert pa["cost"] == round((pa["prompt_tokens"] * 1.5 + pa["completion_tokens"] * 6) / 1e6, 6)
    assert "cost" not in priced[f"127.0.0.1:{b.port}"]

    from corral.report import load

    shown = {s.server: s.cost for s in load(tmp_path / "out.jsonl").servers}
    assert shown[f"127.0.0.1:{a.port}"] == pytest.approx(pa["cost"]) and shown[f"127.0.0.1:{b.port}"] is None


def test_ollama_batch_cluster_habits(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory()
    (tmp_path / "config.toml").write_text(f'model = "llama3.2"\n[ollama_instances]\n"127.0.0.1:{server.port}" = 0\n')
    write_jsonl(tmp_path / "p.jsonl", [{"role": "user", "content": f"q{i}"} for i in range(4)])
    server.fail_next(1, status=400)  # one row fails for good
    done = corral("run", "--prompts", "p.jsonl", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "using ./config.toml" in done.stderr and "responses/" in done.stderr
    files = sorted((tmp_path / "responses").glob("*.json"))
    assert len(files) == 3 and all(f.name[:6] in {"000001", "000002", "000003", "000004"} for f in files)
    assert files[0].read_text().startswith('{\n    "prompt": ')  # 4 spaces, as that script writes
    (failed,) = read_jsonl(tmp_path / "responses" / "errors.jsonl")
    assert failed["error"] and failed["line"] in (1, 2, 3, 4) and failed["prompt"].startswith("q")
    assert failed["file"].startswith(f"{failed['line']:06d}-")

    shown = corral("show", "responses", "--errors", cwd=tmp_path)
    assert shown.returncode == 0 and shown.stdout.count("# File:") == 1 and "Error:\n" in shown.stdout

    healed = corral("run", "--prompts", "p.jsonl", "--retry-failed", cwd=tmp_path)
    assert healed.returncode == 0, healed.stderr
    assert len(list((tmp_path / "responses").glob("*.json"))) == 4
    assert not (tmp_path / "responses" / "errors.jsonl").exists()  # the list says how the folder is


def _batch_line(custom_id: str, model: str, **body: Any) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": f"say {custom_id}"}], **body}}


def test_openai_batch_lines_run_like_vllm_run_batch(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(api="openai")
    write_jsonl(tmp_path / "batch.jsonl", [
        _batch_line("a", "llama3.2"),
        _batch_line("b", "no-such-model"),
        _batch_line("c", "llama3.2", max_tokens=2, response_format={"type": "json_object"}),
        _batch_line("d", "llama3.2"),
    ])
    done = corral("run", "batch.jsonl", "--server", server.url, "--api", "openai", "-o", "out.jsonl",
                  cwd=tmp_path)
    assert done.returncode == 1, done.stderr  # a line failed: said, and the rest ran
    rows = {r["custom_id"]: r for r in read_jsonl(tmp_path / "out.jsonl")}
    assert list(rows) == ["a", "b", "c", "d"]
    assert rows["b"]["response"]["status_code"] == 404 and "no-such-model" in rows["b"]["error"]
    cut = rows["c"]["response"]
    assert cut["status_code"] == 200 and rows["c"]["error"] is None
    assert cut["body"]["choices"][0]["finish_reason"] == "length"
    assert cut["body"]["choices"][0]["message"]["content"]
    assert rows["a"]["response"]["status_code"] == rows["d"]["response"]["status_code"] == 200
    assert len(server.requests) == 3  # the unserved line was never sent
    assert all(b.get("model") != "no-such-model" for _, b in server.requests)


def test_a_plain_prompt_file_with_an_unserved_model_is_still_refused(tmp_path: Path, fake_ollama) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "model": "nope"}, {"prompt": "y"}])
    done = corral("run", "p.jsonl", "--server", fake_ollama.url, "-m", "llama3.2", "-o", "o.jsonl",
                  cwd=tmp_path)
    assert done.returncode == 2 and "'nope' is not on any live server" in done.stderr
    assert os.path.exists(tmp_path / "p.jsonl")
