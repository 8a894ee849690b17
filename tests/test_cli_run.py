"""`corral run`, `merge` and `show` as a user runs them, against fake servers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import corral, read_jsonl, write_jsonl


def _prompts(path: Path, n: int) -> Path:
    return write_jsonl(path, [{"role": "user", "content": f"question {i}"} for i in range(n)])


def test_run_with_ollama_batch_cluster_config_and_flags(tmp_path: Path, fake_ollama_factory) -> None:
    a, b = fake_ollama_factory(slots=2, latency=0.005), fake_ollama_factory(slots=2, latency=0.005)
    (tmp_path / "cluster.toml").write_text(
        f'model = "llama3.2"\nsystem_message = "answer briefly"\n[ollama_instances]\n'
        f'"127.0.0.1:{a.port}" = 0\n"127.0.0.1:{b.port}" = 1\n')
    _prompts(tmp_path / "prompts.jsonl", 30)
    proc = corral("run", "--prompts", "prompts.jsonl", "--config", "cluster.toml",
                  "--output_dir", "responses", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "responses").glob("*.json"))
    assert len(files) == 30
    first = json.loads(files[0].read_text())
    assert first == {"prompt": "question 0", "response": "echo: question 0"}
    assert a.completed > 0 and b.completed > 0
    (_, body) = a.requests[0]
    assert body["messages"][0] == {"role": "system", "content": "answer briefly"}
    assert "30 ok, 0 failed" in proc.stderr

    shown = corral("show", "responses", cwd=tmp_path)
    assert shown.returncode == 0
    assert shown.stdout.startswith("#" * 40 + "\n# File: 000001-")
    assert "Prompt:\nquestion 0\n\nResponse:\necho: question 0\n" in shown.stdout


def test_results_jsonl_fields_and_resume(tmp_path: Path, fake_ollama) -> None:
    _prompts(tmp_path / "p.jsonl", 40)
    args = ("run", "p.jsonl", "--server", fake_ollama.url, "-m", "llama3.2", "-o", "out.jsonl")
    proc = corral(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == [str(i) for i in range(1, 41)]
    assert set(rows[0]) >= {"id", "prompt", "response", "model", "server", "error", "prompt_eval_count",
                            "eval_count", "eval_duration", "total_duration", "latency", "attempts"}
    assert rows[0]["server"] == f"127.0.0.1:{fake_ollama.port}"
    assert (tmp_path / "out.jsonl.corral.db").exists()

    fake_ollama.reset_stats()
    again = corral(*args, cwd=tmp_path)
    assert again.returncode == 0
    assert fake_ollama.path_counts.get("/api/chat", 0) == 0
    assert "40 ok, 0 failed, 40 from the store" in again.stderr
    assert [r["response"] for r in read_jsonl(tmp_path / "out.jsonl")] == [r["response"] for r in rows]


def test_failures_exit_1_are_listed_and_retry_failed_resends(tmp_path: Path, fake_ollama) -> None:
    _prompts(tmp_path / "p.jsonl", 5)
    fake_ollama.fail_next(2, status=400)
    args = ["run", "p.jsonl", "--server", fake_ollama.url, "-m", "llama3.2", "-o", "out.jsonl", "-j", "1"]
    proc = corral(*args, cwd=tmp_path)
    assert proc.returncode == 1
    assert "2 row(s) failed" in proc.stderr and "HTTP 400" in proc.stderr
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert [r["success"] for r in rows] == [False, False, True, True, True]

    plain = corral(*args, cwd=tmp_path)  # failed rows are not re-sent without --retry-failed
    assert plain.returncode == 1
    retried = corral(*args, "--retry-failed", cwd=tmp_path)
    assert retried.returncode == 0, retried.stderr
    assert all(r["success"] for r in read_jsonl(tmp_path / "out.jsonl"))


def test_openai_batch_lines_in_vllm_run_batch_lines_out(tmp_path: Path, fake_openai) -> None:
    write_jsonl(tmp_path / "batch.jsonl", [
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "llama3.2", "messages": [{"role": "user", "content": f"hi {i}"}], "max_tokens": 20}}
        for i in range(3)
    ])
    fake_openai.fail_next(1, status=400)
    proc = corral("run", "batch.jsonl", "--server", fake_openai.url, "--api", "openai", "-o", "out.jsonl",
                  "-j", "1", cwd=tmp_path)
    assert proc.returncode == 1
    failed, ok, _ = read_jsonl(tmp_path / "out.jsonl")
    assert set(ok) == {"id", "custom_id", "response", "error"}
    assert ok["custom_id"] == "req-1" and ok["error"] is None
    assert ok["response"]["status_code"] == 200 and ok["response"]["request_id"].startswith("corral-batch-")
    body = ok["response"]["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"] == "echo: hi 1"
    assert set(body["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert failed["custom_id"] == "req-0" and failed["response"]["body"] is None
    assert failed["response"]["status_code"] == 400 and "HTTP 400" in failed["error"]


def test_batch_lines_on_an_ollama_server_get_a_chat_completion_body(tmp_path: Path, fake_ollama) -> None:
    write_jsonl(tmp_path / "batch.jsonl", [{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                                            "body": {"model": "llama3.2",
                                                     "messages": [{"role": "user", "content": "yo"}]}}])
    proc = corral("run", "batch.jsonl", "--server", fake_ollama.url, "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = read_jsonl(tmp_path / "out.jsonl")
    body = line["response"]["body"]
    assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"] == "echo: yo"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_merge_json_answers(tmp_path: Path, fake_ollama_factory) -> None:
    schema = {"type": "object", "properties": {"mrn": {"type": "string"}, "age": {"type": "integer"}}}
    server = fake_ollama_factory()
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    _prompts(tmp_path / "notes.jsonl", 4)
    proc = corral("run", "notes.jsonl", "--server", server.url, "-m", "llama3.2", "--schema", "@schema.json",
                  "--output-dir", "data", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    merged = corral("merge", "--input-dir", "data", "--output-file", "all.json", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    data = json.loads((tmp_path / "all.json").read_text())
    assert len(data) == 4 and all(set(item) == {"mrn", "age"} for item in data)


def test_text_input_and_ollama_host_default(tmp_path: Path, fake_ollama) -> None:
    (tmp_path / "p.txt").write_text("one\ntwo\n")
    proc = corral("run", "p.txt", "-m", "llama3.2", "-o", "out.jsonl", cwd=tmp_path,
                  env={"OLLAMA_HOST": f"127.0.0.1:{fake_ollama.port}"})
    assert proc.returncode == 0, proc.stderr
    assert [r["response"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["echo: one", "echo: two"]


def test_non_terminal_progress_is_plain_log_lines(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=2, latency=0.05)
    _prompts(tmp_path / "p.jsonl", 60)
    proc = corral("run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl", cwd=tmp_path)
    assert proc.returncode == 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("corral: ") and " done, " in line]
    assert lines, proc.stderr
    assert "/60 done" in lines[0] and "req/s" in lines[0] and "ETA" in lines[0]
    assert "\x1b[" not in proc.stderr  # no terminal escape codes in a log file


@pytest.mark.parametrize("args, fragment", [
    (["run", "p.jsonl", "-m", "llama3.2", "-o", "p.jsonl/out.jsonl"], "p.jsonl/out.jsonl: cannot"),
    (["run", "-m", "llama3.2", "-o", "o.jsonl"], "no prompt file"),
    (["run", "missing.jsonl", "-m", "llama3.2", "-o", "o.jsonl"], "missing.jsonl: file not found"),
    (["run", "p.jsonl", "-m", "nope", "-o", "o.jsonl"], "'nope' is not on any live server"),
    (["run", "p.jsonl", "-m", "llama3.2", "-o", "o.jsonl", "--server", "http://127.0.0.1:9"], "no server answered"),
    (["run", "p.jsonl", "-m", "llama3.2", "-o", "o.jsonl", "--server", "http://bad host"], "bad server URL"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path: Path, fake_ollama, args: list[str], fragment: str) -> None:
    _prompts(tmp_path / "p.jsonl", 2)
    if "--server" not in args:
        args = [*args, "--server", fake_ollama.url]
    proc = corral(*args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert fragment in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.part"))  # no stray half-written output


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output(tmp_path: Path, fake_ollama) -> None:
    (tmp_path / "ro").mkdir(mode=0o500)
    _prompts(tmp_path / "p.jsonl", 1)
    proc = corral("run", "p.jsonl", "--server", fake_ollama.url, "-m", "llama3.2", "-o", "ro/out.jsonl",
                  cwd=tmp_path)
    assert proc.returncode == 2 and "cannot" in proc.stderr


def test_all_servers_gone_rows_fail_after_max_outage(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=2, latency=0.05)
    _prompts(tmp_path / "p.jsonl", 200)
    import threading

    def kill_soon() -> None:
        server.wait_until(lambda s: s.completed >= 10, timeout=20)
        server.kill()

    killer = threading.Thread(target=kill_soon)
    killer.start()
    proc = corral("run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
                  "--max-outage", "1", "--timeout", "2", cwd=tmp_path, timeout=60)
    killer.join()
    assert proc.returncode == 1
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 200
    failed = [r for r in rows if not r["success"]]
    assert failed and all(r["error"] for r in failed)
    assert any("no live server for llama3.2" in r["error"] for r in failed)
    assert sum(r["success"] for r in rows) >= 10
