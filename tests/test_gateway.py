"""`corral gateway`, driven by the official `openai` SDK as any user's script would drive OpenAI.

Every test talks to a real gateway process on 127.0.0.1 in front of fake servers; figures are
counters and what was sent, never durations."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest

from corral.gateway.main import is_loopback
from corral.gateway.scheduler import FairShare
from tests.conftest import GatewayProcess, read_jsonl, wait_for, write_batch

FINAL = ("completed", "failed", "expired", "cancelled")


def finished(client: Any, batch_id: str, timeout: float = 120) -> Any:
    """The batch once its status is final (polled as a user would)."""
    found: list[Any] = []

    def done() -> bool:
        found[:] = [client.batches.retrieve(batch_id)]
        return found[0].status in FINAL

    wait_for(done, timeout, f"batch {batch_id} to end", interval=0.1)
    return found[0]


def lines_of(client: Any, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [json.loads(line) for line in client.files.content(file_id).content.splitlines() if line.strip()]


def submit(client: Any, path: Path, endpoint: str = "/v1/chat/completions", **kwargs: Any) -> Any:
    with open(path, "rb") as handle:
        uploaded = client.files.create(file=handle, purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint=endpoint,
                                 completion_window=kwargs.pop("completion_window", "24h"), **kwargs)


def test_a_chat_batch_end_to_end_with_the_sdk(tmp_path: Path, fake_ollama) -> None:
    path = write_batch(tmp_path / "batch.jsonl", 30)
    with path.open("ab") as handle:  # a model no server has: the error file, as OpenAI does
        handle.write(json.dumps({"custom_id": "lost", "method": "POST", "url": "/v1/chat/completions",
                                 "body": {"model": "nope", "messages": [{"role": "user", "content": "?"}]}})
                     .encode() + b"\n")
    with GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state") as gateway:
        client = gateway.client()
        uploaded = client.files.create(file=path.open("rb"), purpose="batch")
        assert uploaded.purpose == "batch" and uploaded.bytes == path.stat().st_size
        assert uploaded.filename == "batch.jsonl" and uploaded.id.startswith("file-")
        assert client.files.retrieve(uploaded.id).bytes == uploaded.bytes
        assert client.files.content(uploaded.id).content == path.read_bytes()

        batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                      completion_window="24h", metadata={"team": "search"})
        assert batch.status == "validating" and batch.metadata == {"team": "search"}
        batch = finished(client, batch.id)
        assert batch.status == "completed", batch
        assert (batch.request_counts.total, batch.request_counts.completed, batch.request_counts.failed) == (31, 30, 1)
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at

        output = lines_of(client, batch.output_file_id)
        assert sorted(line["custom_id"] for line in output) == sorted(f"row-{i}" for i in range(30))
        first = output[0]
        assert first["id"].startswith("batch_req_") and first["error"] is None
        assert first["response"]["status_code"] == 200
        assert first["response"]["body"]["object"] == "chat.completion"
        assert first["response"]["body"]["choices"][0]["message"]["content"]
        errors = lines_of(client, batch.error_file_id)
        assert [e["custom_id"] for e in errors] == ["lost"]
        assert errors[0]["response"]["status_code"] == 404
        assert errors[0]["response"]["body"]["error"]["code"] == "model_not_found"
        assert fake_ollama.path_counts["/api/chat"] == 30  # the unknown model was never sent

        assert [b.id for b in client.batches.list()] == [batch.id]
        listed = {f.id: f.purpose for f in client.files.list()}
        assert listed == {uploaded.id: "batch", batch.output_file_id: "batch_output",
                          batch.error_file_id: "batch_output"}
        assert client.files.delete(uploaded.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            client.batches.retrieve("batch_" + "0" * 24)


def test_an_embeddings_batch_and_a_completions_batch(tmp_path: Path, fake_openai) -> None:
    embed = write_batch(tmp_path / "embed.jsonl", 12, url="/v1/embeddings")
    complete = write_batch(tmp_path / "complete.jsonl", 5, url="/v1/completions")
    with GatewayProcess(tmp_path, "-s", fake_openai.url, "--api", "openai", "--state", "state") as gateway:
        client = gateway.client()
        first = submit(client, embed, "/v1/embeddings")
        second = submit(client, complete, "/v1/completions")
        first, second = finished(client, first.id), finished(client, second.id)
        completions = lines_of(client, second.output_file_id)
    assert first.status == second.status == "completed"
    assert first.request_counts.completed == 12 and second.request_counts.completed == 5
    assert completions[0]["response"]["body"]["choices"][0]["text"]


def test_embeddings_lines_hold_the_vectors(tmp_path: Path, fake_openai) -> None:
    embed = write_batch(tmp_path / "embed.jsonl", 6, url="/v1/embeddings")
    with GatewayProcess(tmp_path, "-s", fake_openai.url, "--api", "openai", "--state", "state") as gateway:
        client = gateway.client()
        batch = finished(client, submit(client, embed, "/v1/embeddings").id)
        output = lines_of(client, batch.output_file_id)
    assert batch.error_file_id is None and len(output) == 6
    body = output[0]["response"]["body"]
    assert body["object"] == "list" and len(body["data"][0]["embedding"]) == fake_openai.embedding_dim


def test_a_malformed_file_fails_at_validating_with_every_bad_line(tmp_path: Path, fake_ollama) -> None:
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]}}
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([
        json.dumps(good),
        "{not json",
        json.dumps({**good, "custom_id": "b", "url": "/v1/embeddings"}),
        json.dumps(good),                                             # duplicate custom_id
        json.dumps({"prompt": "not a batch line"}),
    ]) + "\n")
    with GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state") as gateway:
        client = gateway.client()
        batch = finished(client, submit(client, path).id)
    assert batch.status == "failed" and batch.failed_at
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json_line"), (3, "mismatched_endpoint"), (4, "duplicate_custom_id"), (5, "invalid_request")]
    assert fake_ollama.path_counts["/api/chat"] == 0


def test_cancel_keeps_what_finished_and_sends_no_more(tmp_path: Path, fake_ollama_factory) -> None:
    slow = fake_ollama_factory(latency=0.2, slots=1)
    path = write_batch(tmp_path / "batch.jsonl", 200)
    with GatewayProcess(tmp_path, "-s", slow.url, "-j", "1", "--read-ahead", "4", "--state", "state") as gateway:
        client = gateway.client()
        batch = submit(client, path)
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 2, 60, "two answers")
        cancelled = client.batches.cancel(batch.id)
        assert cancelled.status in ("cancelling", "cancelled")
        batch = finished(client, batch.id)
        output = lines_of(client, batch.output_file_id)
    assert batch.status == "cancelled" and batch.cancelling_at and batch.cancelled_at
    assert len(output) == batch.request_counts.completed
    assert slow.path_counts["/api/chat"] <= batch.request_counts.completed + 4  # the read-ahead at most
    assert slow.path_counts["/api/chat"] < 200


def test_the_completion_window_expires_keeping_what_finished(tmp_path: Path, fake_ollama_factory) -> None:
    slow = fake_ollama_factory(latency=0.1, slots=1)
    path = write_batch(tmp_path / "batch.jsonl", 400)
    with GatewayProcess(tmp_path, "-s", slow.url, "-j", "1", "--read-ahead", "4", "--state", "state") as gateway:
        client = gateway.client()
        batch = finished(client, submit(client, path, completion_window="2s").id)
        output, errors = lines_of(client, batch.output_file_id), lines_of(client, batch.error_file_id)
    assert batch.status == "expired" and batch.expired_at
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(f"row-{i}" for i in range(400))  # each exactly once
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert len(output) == batch.request_counts.completed > 0


def test_key_cap_and_errors_are_openai_shaped(tmp_path: Path, fake_ollama) -> None:
    path = write_batch(tmp_path / "batch.jsonl", 3)
    big = write_batch(tmp_path / "big.jsonl", 200)
    env = {"GATEWAY_KEY": "s3cret-key-value"}
    with GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state", "--api-key-env", "GATEWAY_KEY",
                        "--max-upload-mb", "0.01", "-v", env=env) as gateway:
        with pytest.raises(openai.AuthenticationError):
            gateway.client("wrong").files.list()
        client = gateway.client("s3cret-key-value")
        with pytest.raises(openai.APIStatusError) as too_big:
            client.files.create(file=big.open("rb"), purpose="batch")
        assert too_big.value.status_code == 413
        with pytest.raises(openai.BadRequestError):
            client.batches.create(input_file_id=client.files.create(file=path.open("rb"), purpose="batch").id,
                                  endpoint="/v1/images", completion_window="24h")  # type: ignore[arg-type]
        batch = finished(client, submit(client, path).id)
        assert batch.request_counts.completed == 3
    state = tmp_path / "state"
    assert not any(b"s3cret-key-value" in f.read_bytes() for f in state.rglob("*") if f.is_file())
    assert "s3cret-key-value" not in "".join(gateway.log)
    assert [p.name for p in (state / "files").iterdir() if p.name.endswith(".part")] == []


def test_a_small_batch_is_not_starved_by_a_big_one(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(latency=0.01, slots=2)
    big = write_batch(tmp_path / "big.jsonl", 3000, prefix="big")
    small = write_batch(tmp_path / "small.jsonl", 20, prefix="small")
    with GatewayProcess(tmp_path, "-s", server.url, "-j", "2", "--read-ahead", "8", "--state", "state") as gateway:
        client = gateway.client()
        first = submit(client, big)
        wait_for(lambda: client.batches.retrieve(first.id).request_counts.completed >= 20, 60, "the big one going")
        second = finished(client, submit(client, small, metadata={"priority": "2"}).id)
        assert second.status == "completed"
        assert client.batches.retrieve(first.id).request_counts.completed < 3000
        client.batches.cancel(first.id)
        finished(client, first.id)


def test_fair_share_gives_turns_by_weight() -> None:
    share: FairShare[str] = FairShare()
    share.add("big", 1)
    share.add("heavy", 3)
    turns = Counter(share.pick() for _ in range(400))
    assert turns == {"big": 100, "heavy": 300}
    share.add("late", 1)  # joins at the current pass: turns at once, no burst
    turns = Counter(share.pick() for _ in range(500))
    assert {name: round(count, -1) for name, count in turns.items()} == {"big": 100, "heavy": 300, "late": 100}
    share.remove("heavy")
    assert Counter(share.pick() for _ in range(10)) == {"big": 5, "late": 5}


def test_sigkill_mid_batch_then_restart_resumes_without_resending(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(latency=0.02, slots=4)
    n = 600
    path = write_batch(tmp_path / "batch.jsonl", n)
    args = ("-s", server.url, "--state", "state")
    gateway = GatewayProcess(tmp_path, *args)
    try:
        client = gateway.client()
        batch = submit(client, path)
        wait_for(lambda: client.batches.retrieve(batch.id).request_counts.completed >= 150, 60, "150 answers")
        os.kill(gateway.pid, signal.SIGKILL)
        gateway.proc.wait(10)
        sent_before = server.path_counts["/api/chat"]
    finally:
        gateway.stop()
    with GatewayProcess(tmp_path, *args) as again:
        client = again.client()
        batch = finished(client, batch.id)
        output = lines_of(client, batch.output_file_id)
    assert batch.status == "completed" and batch.request_counts.completed == n
    assert sorted(line["custom_id"] for line in output) == sorted(f"row-{i}" for i in range(n))
    resent = server.path_counts["/api/chat"] - n
    assert 0 <= resent <= 16  # at most the slots in flight at the kill (8 slots, learnt up to 2x)
    assert sent_before < server.path_counts["/api/chat"]


def test_loopback_is_recognised() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")


def test_a_second_gateway_on_the_same_state_is_refused(tmp_path: Path, fake_ollama) -> None:
    with GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state"):
        with pytest.raises(AssertionError, match="in use by another corral process"):
            GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state", timeout=30)


def test_state_survives_a_clean_restart(tmp_path: Path, fake_ollama) -> None:
    path = write_batch(tmp_path / "batch.jsonl", 4)
    with GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state") as gateway:
        client = gateway.client()
        batch = finished(client, submit(client, path).id)
    with GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state") as gateway:
        client = gateway.client()
        again = client.batches.retrieve(batch.id)
        assert again.status == "completed" and again.output_file_id == batch.output_file_id
        assert len(lines_of(client, again.output_file_id)) == 4
    assert len(read_jsonl(tmp_path / "state" / "files" / batch.output_file_id)) == 4


def test_the_dashboard_shows_what_the_api_says_in_headless_chromium(tmp_path: Path, fake_ollama) -> None:
    """The page at / rendered by Chromium (network pointed at a closed proxy: anything loaded from
    outside would fail), its rows checked against the SDK's batches.list."""
    import re
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed: `make install` installs it"
    write_batch(tmp_path / "a.jsonl", 25)
    write_batch(tmp_path / "b.jsonl", 7, model="missing")
    with GatewayProcess(tmp_path, "-s", fake_ollama.url, "--state", "state") as gateway:
        client = gateway.client()
        ids = [submit(client, tmp_path / name).id for name in ("a.jsonl", "b.jsonl")]
        for batch_id in ids:
            finished(client, batch_id)
        api = {b.id: b for b in client.batches.list()}
        shot = tmp_path / "dashboard.png"
        base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-extensions", "--proxy-server=127.0.0.1:9",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=5000"]
        dom = subprocess.run([*base, "--enable-logging=stderr", "--v=0", "--dump-dom", gateway.url + "/"],
                             capture_output=True, text=True, timeout=180)
        assert dom.returncode == 0, dom.stderr[-2000:]
        subprocess.run([*base, f"--screenshot={shot}", "--window-size=1280,900", gateway.url + "/"],
                       capture_output=True, text=True, timeout=180)
    assert "Uncaught" not in dom.stderr
    assert re.search(r'id="updated"[^>]*data-polls="[1-9]', dom.stdout), "the page never drew the state"
    rows = {m["id"]: m for m in (dict(re.findall(r'data-(\w+)="([^"]*)"', tr)) for tr in
                                 re.findall(r"<tr ([^>]*data-id=[^>]*)>", dom.stdout))}
    assert set(rows) == set(ids)
    for batch_id, row in rows.items():
        counts = api[batch_id].request_counts
        assert (row["status"], int(row["total"]), int(row["completed"]), int(row["failed"])) == (
            api[batch_id].status, counts.total, counts.completed, counts.failed)
    assert rows[ids[1]]["failed"] == "7"
    servers = re.findall(r'<tr [^>]*data-label="([^"]+)"[^>]*data-ok="(\d+)"', dom.stdout)
    assert servers and int(servers[0][1]) == 25
    assert "The model `missing` is not served" in dom.stdout  # the last errors
