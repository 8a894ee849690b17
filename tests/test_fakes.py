"""Tests of the fake servers themselves: if the fakes lie, every test built on them lies too.

Clients here are deliberately plain (urllib, aiohttp, the official ``ollama`` package), never corral,
so a bug in corral cannot hide a bug in the fake. All traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes import OLLAMA_BUSY_MESSAGE, FakeServer, fake_embedding

pytest_plugins = ["tests.fakes.fixtures"]

ROOT = Path(__file__).resolve().parents[1]
# No proxies, ever: a proxy from the environment would take test traffic off the machine.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ------------------------------------------------------------------------------------------- helpers


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 5.0) -> tuple[int, http.client.HTTPMessage, bytes]:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def get(url: str, **kw: Any) -> tuple[int, Any]:
    status, headers, raw = call("GET", url, **kw)
    return status, _decode(headers, raw)


def post(url: str, body: Any, **kw: Any) -> tuple[int, Any]:
    status, headers, raw = call("POST", url, body, **kw)
    return status, _decode(headers, raw)


def _decode(headers: http.client.HTTPMessage, raw: bytes) -> Any:
    return json.loads(raw) if "json" in headers.get("Content-Type", "") else raw.decode()


def chat_body(prompt: str, model: str = "llama3.2", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": False,
            **extra}


async def _post_all(url: str, bodies: list[dict[str, Any]],
                    timeout: float = 10.0) -> list[tuple[int, dict[str, str], Any]]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async def one(body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
            async with session.post(url, json=body) as response:
                return response.status, dict(response.headers), await response.json()
        return await asyncio.gather(*(one(b) for b in bodies))


def post_all(url: str, bodies: list[dict[str, Any]],
             timeout: float = 10.0) -> list[tuple[int, dict[str, str], Any]]:
    return asyncio.run(_post_all(url, bodies, timeout))


# ---------------------------------------------------------------------------- Ollama: probes & show


def test_ollama_probe_endpoints(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(models=("llama3.2", "qwen2.5:7b"), version="0.6.2")
    status, text = get(server.url + "/")
    assert (status, text) == (200, "Ollama is running")
    assert get(server.url + "/api/version") == (200, {"version": "0.6.2"})

    status, tags = get(server.url + "/api/tags")
    assert status == 200
    names = [m["name"] for m in tags["models"]]
    assert names == ["llama3.2:latest", "qwen2.5:7b"]
    first = tags["models"][0]
    assert set(first) >= {"name", "model", "modified_at", "size", "digest", "details"}
    assert first["model"] == first["name"]
    assert len(first["digest"]) == 64 and int(first["digest"], 16) >= 0
    assert set(first["details"]) >= {"format", "family", "parameter_size", "quantization_level"}
    assert first["details"]["format"] == "gguf"
    assert tags["models"][1]["details"]["parameter_size"] == "7B"
    # Digests are stable: the same name gives the same digest on another server.
    other = fake_ollama_factory(models=("llama3.2",))
    assert get(other.url + "/api/tags")[1]["models"][0]["digest"] == first["digest"]

    status, ps = get(server.url + "/api/ps")
    assert status == 200 and len(ps["models"]) == 2
    # Unknown routes answer like gin; no "model" in the text (clients use that to detect old servers).
    status, headers, raw = call("GET", server.url + "/api/nothing")
    assert (status, raw) == (404, b"404 page not found")
    assert server.path_counts["/api/tags"] == 1 and server.status_counts == {}


def test_ollama_show(fake_ollama: FakeServer) -> None:
    status, show = post(fake_ollama.url + "/api/show", {"model": "llama3.2"})
    assert status == 200
    assert set(show) >= {"modelfile", "parameters", "template", "details", "model_info",
                         "capabilities", "modified_at"}
    assert show["capabilities"] == ["completion"]
    assert show["model_info"]["general.architecture"] == "llama"
    assert show["model_info"]["llama.context_length"] > 0
    assert post(fake_ollama.url + "/api/show", {"name": "LLAMA3.2:latest"})[0] == 200
    assert post(fake_ollama.url + "/api/show", {"model": "nope"}) == (
        404, {"error": "model 'nope' not found"})
    assert post(fake_ollama.url + "/api/show", {}) == (400, {"error": "model is required"})


# ----------------------------------------------------------------------------- Ollama: generation


def test_ollama_chat_non_streaming(fake_ollama: FakeServer) -> None:
    status, data = post(fake_ollama.url + "/api/chat", chat_body("why is the sky blue"))
    assert status == 200
    assert data["model"] == "llama3.2"  # echoed as sent
    assert data["message"] == {"role": "assistant", "content": "echo: why is the sky blue"}
    assert data["done"] is True and data["done_reason"] == "stop"
    assert data["created_at"].endswith("Z")
    assert data["eval_count"] == 6 and data["prompt_eval_count"] == 5
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(data[key], int) and data[key] > 0
    assert data["total_duration"] >= data["load_duration"] + data["eval_duration"]
    # "llama3.2:latest" and "llama3.2" are the same model.
    assert post(fake_ollama.url + "/api/chat", chat_body("x", model="llama3.2:latest"))[0] == 200
    assert fake_ollama.completed == 2 and fake_ollama.status_counts == {200: 2}


def test_ollama_streams_ndjson_by_default(fake_ollama: FakeServer) -> None:
    body = chat_body("one two three")
    del body["stream"]  # absent means streaming, as in real Ollama
    status, headers, raw = call("POST", fake_ollama.url + "/api/chat", body)
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    chunks = [json.loads(line) for line in raw.decode().splitlines()]
    assert len(chunks) >= 2
    assert all(c["done"] is False for c in chunks[:-1])
    assert "".join(c["message"]["content"] for c in chunks) == "echo: one two three"
    final = chunks[-1]
    assert final["done"] is True and final["done_reason"] == "stop" and final["eval_count"] == 4

    status, headers, raw = call("POST", fake_ollama.url + "/api/generate",
                                {"model": "llama3.2", "prompt": "hi", "stream": True})
    lines = [json.loads(line) for line in raw.decode().splitlines()]
    assert "".join(c["response"] for c in lines) == "echo: hi"
    assert lines[-1]["done"] is True and "context" in lines[-1]


def test_ollama_generate_num_predict_truncates(fake_ollama: FakeServer) -> None:
    body = {"model": "llama3.2", "prompt": "a b c d e f", "stream": False,
            "options": {"num_predict": 3}}
    status, data = post(fake_ollama.url + "/api/generate", body)
    assert status == 200
    assert data["response"] == "echo: a b" and data["eval_count"] == 3
    assert data["done_reason"] == "length"
    body["options"]["num_predict"] = 100
    status, data = post(fake_ollama.url + "/api/generate", body)
    assert data["response"] == "echo: a b c d e f" and data["done_reason"] == "stop"
    # Empty prompt: Ollama's "load the model" answer.
    status, data = post(fake_ollama.url + "/api/generate",
                        {"model": "llama3.2", "prompt": "", "stream": False})
    assert status == 200 and data["done_reason"] == "load" and data["response"] == ""


def test_ollama_errors(fake_ollama: FakeServer) -> None:
    url = fake_ollama.url
    assert post(url + "/api/chat", chat_body("x", model="mistral")) == (
        404, {"error": "model 'mistral' not found"})
    assert post(url + "/api/generate", {"model": "mistral", "prompt": "x"})[0] == 404
    assert post(url + "/api/embed", {"model": "mistral", "input": "x"}) == (
        404, {"error": 'model "mistral" not found, try pulling it first'})
    status, headers, raw = call("POST", url + "/api/chat", b"{not json")
    assert status == 400 and "error" in json.loads(raw)
    assert post(url + "/api/chat", {"messages": []}) == (400, {"error": "model is required"})
    assert post(url + "/api/chat", {"model": "llama3.2", "messages": "hi"})[0] == 400
    assert post(url + "/api/chat", chat_body("x", format="yaml"))[0] == 400
    assert call("POST", url + "/api/chat", b"")[0] == 400
    assert fake_ollama.status_counts == {404: 3, 400: 5}
    assert fake_ollama.completed == 0


def test_ollama_json_format(fake_ollama: FakeServer) -> None:
    status, data = post(fake_ollama.url + "/api/chat", chat_body("hello", format="json"))
    assert json.loads(data["message"]["content"]) == {"echo": "hello"}
    schema = {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer"}, "score": {"type": "number"},
        "ok": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}},
        "color": {"enum": ["red", "blue"]}, "address": {"$ref": "#/$defs/Address"}},
        "$defs": {"Address": {"type": "object", "properties": {"city": {"type": "string"}}}}}
    status, data = post(fake_ollama.url + "/api/generate",
                        {"model": "llama3.2", "prompt": "p", "format": schema, "stream": False})
    value = json.loads(data["response"])
    assert set(value) == set(schema["properties"])
    assert isinstance(value["name"], str) and type(value["age"]) is int
    assert isinstance(value["score"], float) and value["ok"] is False
    assert value["tags"] == [] and value["color"] == "red"
    assert set(value["address"]) == {"city"}


def test_responder_and_callable_latency(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(
        responder=lambda body: body["messages"][-1]["content"].upper(),
        latency=lambda body: 60.0 if "slow" in body["messages"][-1]["content"] else 0.0)
    assert post(server.url + "/api/chat", chat_body("fast one"))[1]["message"]["content"] == "FAST ONE"
    # The slow prompt's latency is far longer than the test: it is held, so the client gives up.
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        call("POST", server.url + "/api/chat", chat_body("slow one"), timeout=0.5)
    assert server.completed == 1 and server.count_by_prompt() == {"fast one": 1, "slow one": 1}
    server.responder = lambda body: 1 / 0  # a broken responder is a 500, not a hung test
    assert post(server.url + "/api/chat", chat_body("x"))[0] == 500


def test_ollama_embeddings(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(embedding_dim=16)
    status, data = post(server.url + "/api/embed",
                        {"model": "llama3.2", "input": ["alpha", "beta", "alpha"]})
    assert status == 200
    assert set(data) >= {"model", "embeddings", "total_duration", "load_duration",
                         "prompt_eval_count"}
    a, b, a2 = data["embeddings"]
    assert len(a) == 16 and a == a2 and a != b
    assert math.isclose(sum(x * x for x in a), 1.0, rel_tol=1e-9)
    assert a == fake_embedding("alpha", 16)
    status, single = post(server.url + "/api/embed", {"model": "llama3.2", "input": "alpha"})
    assert single["embeddings"] == [a]
    status, old = post(server.url + "/api/embeddings", {"model": "llama3.2", "prompt": "alpha"})
    assert status == 200 and old == {"embedding": a}
    assert post(server.url + "/api/embed", {"model": "llama3.2", "input": [1, 2]})[0] == 400
    assert server.count_by_prompt()["alpha"] == 4
    # An older server without /api/embed answers gin's 404 text.
    server.missing_paths = {"/api/embed"}
    status, headers, raw = call("POST", server.url + "/api/embed",
                                {"model": "llama3.2", "input": "x"})
    assert (status, raw) == (404, b"404 page not found")


def test_official_ollama_client_parses_answers(fake_ollama: FakeServer) -> None:
    ollama = pytest.importorskip("ollama")
    client = ollama.Client(host=fake_ollama.url, trust_env=False)
    assert client.chat(model="llama3.2", messages=[{"role": "user", "content": "hi"}]
                       ).message.content == "echo: hi"
    assert client.generate(model="llama3.2", prompt="yo").response == "echo: yo"
    streamed = "".join(part.message.content for part in client.chat(
        model="llama3.2", messages=[{"role": "user", "content": "a b"}], stream=True))
    assert streamed == "echo: a b"
    assert len(client.embed(model="llama3.2", input=["x", "y"]).embeddings) == 2
    assert [m.model for m in client.list().models] == ["llama3.2:latest"]
    assert client.show("llama3.2").details.family == "llama"
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(model="missing", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 404


# -------------------------------------------------------------------------------- OpenAI-compatible


def test_openai_probe_endpoints(fake_ollama_factory: Any) -> None:
    vllm = fake_ollama_factory(api="openai", models=("Qwen/Qwen2.5-7B",))
    status, listing = get(vllm.url + "/v1/models")
    assert status == 200 and listing["object"] == "list"
    entry = listing["data"][0]
    assert entry["id"] == "Qwen/Qwen2.5-7B" and entry["object"] == "model"
    assert isinstance(entry["created"], int) and entry["owned_by"]
    assert get(vllm.url + "/health") == (200, {"status": "ok"})
    assert get(vllm.url + "/props")[0] == 404  # vLLM has no /props

    llama = fake_ollama_factory(api="openai", llamacpp=True, slots=4, strict_models=False)
    status, props = get(llama.url + "/props")
    assert status == 200 and props["total_slots"] == 4
    assert props["model_path"].endswith(".gguf") and "n_ctx" in props["default_generation_settings"]
    llama.loading = True
    assert get(llama.url + "/health")[0] == 503
    assert post(llama.url + "/v1/chat/completions", chat_body("x"))[0] == 503
    llama.loading = False
    status, data = post(llama.url + "/v1/chat/completions", chat_body("x", model="anything"))
    assert status == 200 and data["model"] == "anything" and data["timings"]["predicted_n"] == 2


def test_openai_chat_completion(fake_openai: FakeServer) -> None:
    url = fake_openai.url + "/v1/chat/completions"
    status, data = post(url, chat_body("tell me a story"))
    assert status == 200
    assert data["object"] == "chat.completion" and data["id"].startswith("chatcmpl-")
    assert isinstance(data["created"], int) and data["model"] == "llama3.2"
    (choice,) = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "echo: tell me a story"}
    assert data["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}

    status, data = post(url, chat_body("a b c d", max_tokens=2, seed=7))
    assert data["choices"][0]["finish_reason"] == "length"
    assert data["choices"][0]["message"]["content"] == "echo: a"
    assert data["usage"]["completion_tokens"] == 2
    assert post(url, chat_body("a b c d", max_tokens=2, seed=7))[1]["id"] == data["id"]

    status, data = post(url, chat_body("hi", response_format={"type": "json_object"}))
    assert json.loads(data["choices"][0]["message"]["content"]) == {"echo": "hi"}
    schema = {"type": "object", "properties": {"answer": {"type": "string"},
                                               "n": {"type": "integer"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "r", "schema": schema}}
    status, data = post(url, chat_body("hi", response_format=fmt))
    assert set(json.loads(data["choices"][0]["message"]["content"])) == {"answer", "n"}


def test_openai_errors_and_auth(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(api="openai", api_key="sekrit", max_context_tokens=5)
    url = server.url + "/v1/chat/completions"
    auth = {"Authorization": "Bearer sekrit"}
    status, data = post(url, chat_body("x"))
    assert status == 401 and data["error"]["message"] == "Invalid API key"
    assert post(url, chat_body("x"), headers={"Authorization": "Bearer wrong"})[0] == 401
    assert get(server.url + "/v1/models")[0] == 401
    assert get(server.url + "/v1/models", headers=auth)[0] == 200
    assert post(url, chat_body("x"), headers=auth)[0] == 200

    status, data = post(url, chat_body("x", model="gpt-9"), headers=auth)
    assert status == 404
    assert data["error"]["message"] == "The model `gpt-9` does not exist."
    assert data["error"]["type"] == "NotFoundError" and data["error"]["code"] == 404

    status, data = post(url, chat_body("one two three four five six", max_tokens=10), headers=auth)
    assert status == 400
    assert data["error"]["message"].startswith(
        "This model's maximum context length is 5 tokens. However, you requested 16 tokens")
    assert post(url, {"model": "llama3.2", "messages": []}, headers=auth)[0] == 400
    assert post(url, chat_body("x", max_tokens=0), headers=auth)[0] == 400


def test_openai_completions_embeddings_and_stream(fake_openai: FakeServer) -> None:
    status, data = post(fake_openai.url + "/v1/completions",
                        {"model": "llama3.2", "prompt": "once upon", "max_tokens": 16})
    assert status == 200 and data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "echo: once upon"
    assert data["choices"][0]["finish_reason"] == "stop" and data["usage"]["prompt_tokens"] == 2

    status, data = post(fake_openai.url + "/v1/embeddings",
                        {"model": "llama3.2", "input": ["a", "b"]})
    assert status == 200 and data["object"] == "list" and data["model"] == "llama3.2"
    assert [(d["object"], d["index"]) for d in data["data"]] == [("embedding", 0), ("embedding", 1)]
    assert data["data"][0]["embedding"] == fake_embedding("a", 8)
    assert data["usage"] == {"prompt_tokens": 2, "total_tokens": 2}

    status, headers, raw = call("POST", fake_openai.url + "/v1/chat/completions",
                                chat_body("s t", stream=True, stream_options={"include_usage": True}))
    assert headers["Content-Type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in raw.decode().split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "echo: s t" and chunks[-1]["usage"]["completion_tokens"] == 3


# ------------------------------------------------------------------------- concurrency and queueing


def test_slots_limit_concurrency(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(slots=2, latency=0.15)
    results = post_all(server.url + "/api/chat", [chat_body(f"p{i}") for i in range(6)])
    assert [status for status, _, _ in results] == [200] * 6
    assert server.max_in_flight == 2 and server.in_flight == 0
    assert server.completed == 6


def test_max_queue_answers_busy_503(fake_ollama_factory: Any) -> None:
    ollama = fake_ollama_factory(slots=1, max_queue=1, latency=0.3)
    results = post_all(ollama.url + "/api/chat", [chat_body(f"q{i}") for i in range(4)])
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 503, 503]
    busy = [data for status, _, data in results if status == 503]
    assert busy[0] == {"error": OLLAMA_BUSY_MESSAGE}
    assert ollama.status_counts == {200: 2, 503: 2}

    vllm = fake_ollama_factory(api="openai", slots=1, max_queue=0, latency=0.3)
    results = post_all(vllm.url + "/v1/chat/completions", [chat_body("a"), chat_body("b")])
    busy = [data for status, _, data in results if status == 503]
    assert len(busy) == 1
    assert busy[0]["error"] == {"message": OLLAMA_BUSY_MESSAGE, "type": "server_error",
                                "param": None, "code": 503}


def test_zero_latency_load(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(api="openai")
    results = post_all(server.url + "/v1/chat/completions",
                       [chat_body(f"load {i}") for i in range(400)])
    assert all(status == 200 for status, _, _ in results)
    assert server.completed == 400 and len(server.requests) == 400
    assert server.count_by_prompt()["load 7"] == 1


# ---------------------------------------------------------------------------------- fault injection


def test_fail_rate_with_retry_after_and_seeded_reproducibility(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory()
    server.fail_rate, server.retry_after = 1.0, 2
    status, headers, raw = call("POST", server.url + "/api/chat", chat_body("x"))
    assert status == 503 and headers["Retry-After"] == "2" and "error" in json.loads(raw)

    def pattern(seed: int) -> list[int]:
        srv = fake_ollama_factory(seed=seed)
        srv.fail_rate, srv.fail_status = 0.5, 429
        return [post(srv.url + "/api/chat", chat_body(str(i)))[0] for i in range(12)]

    first = pattern(1)
    assert first == pattern(1)  # same seed, same failures
    assert set(first) == {200, 429}


def test_fail_next(fake_openai: FakeServer) -> None:
    fake_openai.fail_next(2, status=500)
    url = fake_openai.url + "/v1/chat/completions"
    statuses = [post(url, chat_body("retry me"))[0] for _ in range(3)]
    assert statuses == [500, 500, 200]
    assert fake_openai.count_by_prompt() == {"retry me": 3}
    assert fake_openai.status_counts == {500: 2, 200: 1} and fake_openai.completed == 1
    fake_openai.reset_stats()
    assert fake_openai.requests == [] and fake_openai.status_counts == {}


def test_hang_is_detected_by_client_timeout(fake_ollama: FakeServer) -> None:
    fake_ollama.hang = True
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        call("POST", fake_ollama.url + "/api/chat", chat_body("stuck"), timeout=0.3)
    # The client gave up and hung up: the server cancels the request, as Ollama does.
    assert fake_ollama.wait_until(lambda s: s.in_flight == 0, timeout=2)
    assert fake_ollama.completed == 0 and fake_ollama.count_by_prompt() == {"stuck": 1}
    fake_ollama.hang = False
    assert post(fake_ollama.url + "/api/chat", chat_body("ok"))[0] == 200


def test_stop_returns_promptly_with_hung_requests(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory()
    server.hang = True

    async def hung_request() -> BaseException | None:
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(server.url + "/api/chat", json=chat_body("h")) as resp:
                    await resp.read()
        except Exception as exc:  # expected: the server went away mid-request
            return exc
        return None

    async def scenario() -> BaseException | None:
        task = asyncio.create_task(hung_request())
        await asyncio.to_thread(server.wait_until, lambda s: s.in_flight == 1, 2)
        await asyncio.wait_for(asyncio.to_thread(server.stop), 10)  # a safety net, not a measure
        return await asyncio.wait_for(task, 10)

    assert isinstance(asyncio.run(scenario()), aiohttp.ClientError)


def test_drop_rate_truncates_the_answer(fake_ollama: FakeServer) -> None:
    fake_ollama.drop_rate = 1.0

    async def fetch(body: dict[str, Any]) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(fake_ollama.url + "/api/chat", json=body) as resp:
                assert resp.status == 200  # headers arrive, then the body is cut
                await resp.read()

    with pytest.raises(aiohttp.ClientError):
        asyncio.run(fetch(chat_body("drop me")))
    streaming = chat_body("drop me too please now")
    streaming["stream"] = True
    with pytest.raises(aiohttp.ClientError):
        asyncio.run(fetch(streaming))
    with pytest.raises((http.client.IncompleteRead, ConnectionError)):
        call("POST", fake_ollama.url + "/api/chat", chat_body("x"))
    assert fake_ollama.dropped == 3 and fake_ollama.completed == 0
    fake_ollama.drop_rate = 0.0
    assert post(fake_ollama.url + "/api/chat", chat_body("fine"))[0] == 200


def test_slow_body_dribbles(fake_ollama: FakeServer) -> None:
    fake_ollama.slow_body = 20.0  # far longer than the test: the body is seen arriving, never ending

    async def first_piece() -> tuple[int, int | None, bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.post(fake_ollama.url + "/api/chat", json=chat_body("slow")) as resp:
                return resp.status, resp.content_length, await resp.content.readany()

    status, length, piece = asyncio.run(first_piece())
    assert status == 200 and length is not None and 0 < len(piece) < length  # headers, then pieces
    assert fake_ollama.completed == 0

    fake_ollama.slow_body = 0.2
    status, data = post(fake_ollama.url + "/api/chat", chat_body("slow"))
    assert status == 200 and data["message"]["content"] == "echo: slow" and fake_ollama.completed == 1


def test_kill_and_revive_on_the_same_port(fake_ollama_factory: Any) -> None:
    server = fake_ollama_factory(latency=5.0)
    port = server.port

    async def in_flight_request() -> BaseException | None:
        try:
            async with aiohttp.ClientSession() as session:
                async with session.post(server.url + "/api/chat", json=chat_body("k")) as resp:
                    await resp.read()
        except Exception as exc:
            return exc
        return None

    async def scenario() -> BaseException | None:
        task = asyncio.create_task(in_flight_request())
        await asyncio.to_thread(server.wait_until, lambda s: s.in_flight == 1, 2)
        await asyncio.to_thread(server.kill)
        return await asyncio.wait_for(task, 2)

    assert isinstance(asyncio.run(scenario()), aiohttp.ClientError)
    assert not server.alive and server.in_flight == 0
    with pytest.raises(urllib.error.URLError) as refused:
        call("GET", server.url + "/api/version", timeout=1)
    assert isinstance(refused.value.reason, ConnectionRefusedError)

    server.latency = 0.0
    server.revive()
    assert server.alive and server.port == port
    assert post(server.url + "/api/chat", chat_body("again"))[0] == 200
    assert server.count_by_prompt() == {"k": 1, "again": 1}  # statistics survive a restart


# --------------------------------------------------------------------------------- fixtures and CLI


def test_factory_makes_independent_servers(fake_ollama_factory: Any) -> None:
    servers = [fake_ollama_factory(models=(f"m{i}",)) for i in range(3)]
    assert len({s.port for s in servers}) == 3
    for i, server in enumerate(servers):
        assert get(server.url + "/api/tags")[1]["models"][0]["name"] == f"m{i}:latest"
    servers[0].stop()  # stopping early is fine; teardown stops the rest


def test_cli_runs_until_sigterm() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes", "--api", "openai", "--port", "0",
         "--slots", "2", "--models", "a,b", "--count", "2"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls = []
        for _ in range(2):
            line = proc.stdout.readline().strip()
            assert line.startswith("READY http://127.0.0.1:"), line
            urls.append(line.split()[1])
        for url in urls:
            status, listing = get(url + "/v1/models")
            assert status == 200 and [m["id"] for m in listing["data"]] == ["a", "b"]
        assert post(urls[1] + "/v1/chat/completions", chat_body("x", model="b"))[0] == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()


def test_ollama_pull_streams_progress_then_serves_the_model() -> None:
    with FakeServer(api="ollama", models=("tinyllama",)) as srv:
        status, headers, raw = call("POST", srv.url + "/api/pull", {"model": "qwen2.5:0.5b"})
        lines = [json.loads(line) for line in raw.splitlines()]
        assert status == 200 and headers["Content-Type"].startswith("application/x-ndjson")
        assert lines[0] == {"status": "pulling manifest"} and lines[-1] == {"status": "success"}
        assert lines[1]["digest"].startswith("sha256:") and lines[1]["completed"] == lines[1]["total"]
        assert post(srv.url + "/api/pull", {"model": "llama3.2", "stream": False}) == (
            200, {"status": "success"})
        assert post(srv.url + "/api/pull", {"model": "missing-model", "stream": False}) == (
            500, {"error": "pull model manifest: file does not exist"})
        names = {m["name"] for m in get(srv.url + "/api/tags")[1]["models"]}
        assert names == {"tinyllama:latest", "qwen2.5:0.5b", "llama3.2:latest"}
        assert post(srv.url + "/api/chat", chat_body("hi", model="llama3.2"))[0] == 200
