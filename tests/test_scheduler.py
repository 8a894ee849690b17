"""The scheduler through the Python API: pull-based slots, retries, failover, benching, dedupe."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time

import pytest

import corral
from corral import ServerSpec
from corral.engine import RetryPolicy
from corral.errors import NoServerError


def test_results_keep_input_order_with_random_latency(fake_ollama_factory) -> None:
    rng = random.Random(3)
    delays = {f"p{i}": rng.uniform(0, 0.03) for i in range(120)}
    server = fake_ollama_factory(slots=8, latency=lambda body: delays[body["messages"][-1]["content"]])
    results = corral.batch_generate(list(delays), model="llama3.2", servers=[server.url], max_concurrent=8)
    assert [r["prompt"] for r in results] == list(delays)
    assert [r["response"] for r in results] == [f"echo: {p}" for p in delays]
    assert all(r["success"] and r["attempts"] == 1 for r in results)
    assert set(results[0]) >= {"prompt", "response", "model", "success", "error", "eval_count", "eval_duration"}


def test_fast_server_does_more_and_every_slot_stays_busy(fake_ollama_factory) -> None:
    fast = fake_ollama_factory(slots=2, latency=0.005)
    slow = fake_ollama_factory(slots=2, latency=0.08)
    results = corral.batch_generate([f"q{i}" for i in range(300)], model="llama3.2", rate_limit_delay=0,
                                    servers=[ServerSpec(fast.url, max_concurrency=2),
                                             ServerSpec(slow.url, max_concurrency=2)])
    assert all(r["success"] for r in results)
    by_server = {s: sum(r["server"] == s for r in results) for s in {r["server"] for r in results}}
    fast_share = by_server[fast.url.removeprefix("http://")]
    slow_share = by_server[slow.url.removeprefix("http://")]
    assert fast_share > 5 * slow_share, by_server
    assert fast.max_in_flight == 2 and slow.max_in_flight == 2  # slots respected, never exceeded


def test_busy_503_is_retried_with_backoff_without_a_storm(fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=4, latency=0.001, seed=5)
    server.fail_rate = 0.3
    results = corral.batch_generate([f"q{i}" for i in range(200)], model="llama3.2", servers=[server.url])
    assert all(r["success"] for r in results)
    total = sum(server.count_by_prompt().values())
    assert total <= 1.6 * 200, total
    assert server.status_counts[503] > 20


def test_retry_after_is_honoured(fake_ollama, monkeypatch) -> None:
    """The server's Retry-After reaches the retry policy, and the wait it decides is at least that
    (what corral decided to wait is checked, not a clock)."""
    decided: list[tuple[float | None, float]] = []
    delay = RetryPolicy.delay

    def spy(self: RetryPolicy, attempt: int, retry_after: float | None = None) -> float:
        wait = delay(self, attempt, retry_after)
        decided.append((retry_after, wait))
        return wait

    monkeypatch.setattr(RetryPolicy, "delay", spy)
    fake_ollama.fail_next(1, status=429, retry_after=1)
    (result,) = corral.batch_generate(["hi"], model="llama3.2", servers=[fake_ollama.url])
    assert result["success"] and result["attempts"] == 2
    assert len(decided) == 1 and decided[0][0] == 1.0 and decided[0][1] >= 1.0, decided
    assert fake_ollama.status_counts == {429: 1, 200: 1}


def test_400_is_the_rows_error_at_once(fake_ollama) -> None:
    fake_ollama.fail_next(1, status=400)
    results = corral.batch_generate(["bad", "good"], model="llama3.2", servers=[fake_ollama.url],
                                    max_concurrent=1)
    assert results[0]["success"] is False and "HTTP 400" in results[0]["error"]
    assert results[0]["attempts"] == 1
    assert results[1]["success"] is True


def test_unknown_model_fails_fast_with_no_generation_request(fake_ollama_factory) -> None:
    a = fake_ollama_factory(models=("llama3.2",))
    b = fake_ollama_factory(models=("mistral",))
    with pytest.raises(NoServerError) as info:
        corral.batch_generate(["x"], model="qwen3:8b", servers=[a.url, b.url])
    assert "'qwen3:8b' is not on any live server" in str(info.value)
    assert "llama3.2:latest" in str(info.value) and "mistral:latest" in str(info.value)
    assert a.path_counts.get("/api/chat", 0) == b.path_counts.get("/api/chat", 0) == 0


def test_per_row_model_routing(fake_ollama_factory) -> None:
    a = fake_ollama_factory(models=("llama3.2",))
    b = fake_ollama_factory(models=("mistral",))
    prompts = [{"prompt": f"m{i}", "model": "mistral"} if i % 2 else f"l{i}" for i in range(40)]
    results = corral.batch_generate(prompts, model="llama3.2", servers=[a.url, b.url])
    assert all(r["success"] for r in results)
    for r in results:
        expected = b if r["model"] == "mistral" else a
        assert r["server"] == expected.url.removeprefix("http://")


def test_dead_server_is_skipped_at_start(fake_ollama_factory) -> None:
    live = fake_ollama_factory()
    dead = fake_ollama_factory()
    dead.kill()
    results = corral.batch_generate(["a", "b"], model="llama3.2", servers=[dead.url, live.url])
    assert all(r["success"] for r in results)
    with pytest.raises(NoServerError, match="no server answered"):
        corral.batch_generate(["a"], model="llama3.2", servers=[dead.url])


def test_server_dying_mid_run_is_benched_then_rejoins(fake_ollama_factory) -> None:
    a = fake_ollama_factory(slots=2, latency=0.02)
    b = fake_ollama_factory(slots=2, latency=0.02)
    # Prompts of one length: the queue is longest-first, so only equal costs keep input order = time order.
    prompts = [f"q{i:03d}" for i in range(240)]

    def chaos() -> None:
        a.wait_until(lambda s: s.completed >= 20, timeout=10)
        a.kill()
        time.sleep(1.0)
        a.revive()

    thread = threading.Thread(target=chaos)
    thread.start()
    results = corral.batch_generate(prompts, model="llama3.2", servers=[a.url, b.url], max_concurrent=2)
    thread.join()
    assert [r["prompt"] for r in results] == prompts
    assert all(r["success"] for r in results), [r["error"] for r in results if not r["success"]]
    answered = a.count_by_prompt() + b.count_by_prompt()
    assert set(answered) == set(prompts)
    label_a = a.url.removeprefix("http://")
    late = [r for r in results[-60:] if r["server"] == label_a]
    assert late, "the revived server should get work again"


def test_hanging_server_times_out_and_items_move_on(fake_ollama_factory) -> None:
    hung = fake_ollama_factory(slots=2)
    good = fake_ollama_factory(slots=2, latency=0.005)
    hung.hang = True
    # rate_limit_delay=0: OllamaManager's default pause would keep the good server's slots asleep
    # when a timed-out row is retried, so the hung server's own freed slot could take it back.
    results = corral.batch_generate([f"q{i}" for i in range(30)], model="llama3.2",
                                    servers=[hung.url, good.url], timeout=0.5, max_concurrent=2,
                                    rate_limit_delay=0)
    assert all(r["success"] for r in results)
    assert all(r["server"] == good.url.removeprefix("http://") for r in results)
    assert hung.completed == 0 and good.completed == 30


def test_dropped_connections_are_retried_never_stored_as_success(fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=4, seed=2)
    server.drop_rate = 0.3
    results = corral.batch_generate([f"q{i}" for i in range(60)], model="llama3.2", servers=[server.url])
    assert all(r["success"] and r["response"] == f"echo: q{i}" for i, r in enumerate(results))
    assert server.dropped > 0
    assert max(r["attempts"] for r in results) > 1


def test_identical_requests_are_sent_once(fake_ollama) -> None:
    prompts = ["same"] * 50 + ["other"] * 10
    results = corral.batch_generate(prompts, model="llama3.2", servers=[fake_ollama.url])
    assert [r["response"] for r in results] == ["echo: same"] * 50 + ["echo: other"] * 10
    assert fake_ollama.count_by_prompt() == {"same": 1, "other": 1}


def test_store_resumes_across_calls(tmp_path, fake_ollama) -> None:
    store = tmp_path / "journal.db"
    first = corral.batch_generate([f"q{i}" for i in range(20)], model="llama3.2",
                                  servers=[fake_ollama.url], store=store, temperature=0)
    assert not any(r["cached"] for r in first)
    fake_ollama.reset_stats()
    second = corral.batch_generate([f"q{i}" for i in range(25)], model="llama3.2",
                                   servers=[fake_ollama.url], store=store, temperature=0)
    assert sum(r["cached"] for r in second) == 20
    assert sorted(fake_ollama.count_by_prompt()) == [f"q{i}" for i in range(20, 25)]
    assert [r["response"] for r in second] == [f"echo: q{i}" for i in range(25)]


def test_options_and_schema_reach_the_server(fake_ollama) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    (result,) = corral.batch_generate(["x"], model="llama3.2", servers=[fake_ollama.url], format=schema,
                                      temperature=0, seed=42, num_ctx=2048, max_tokens=10,
                                      system="be terse")
    (_, body), = fake_ollama.requests
    assert body["options"] == {"temperature": 0, "seed": 42, "num_ctx": 2048, "num_predict": 10}
    assert body["format"] == schema and body["stream"] is False
    assert body["messages"][0] == {"role": "system", "content": "be terse"}
    assert "label" in result["response"]


def test_openai_backend_with_api_key(fake_ollama_factory, monkeypatch) -> None:
    server = fake_ollama_factory(api="openai", api_key="sekret")
    monkeypatch.setenv("MY_KEY", "sekret")
    spec = ServerSpec(server.url, api="openai", api_key_env="MY_KEY")
    (result,) = corral.batch_generate(["hello"], model="llama3.2", servers=[spec], max_tokens=5, seed=1)
    assert result["success"], result["error"]
    (_, body), = server.requests
    assert body["max_tokens"] == 5 and body["seed"] == 1 and "num_predict" not in body
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(NoServerError, match="authentication refused, HTTP 401"):
        corral.batch_generate(["hello"], model="llama3.2", servers=[spec])


def test_rate_limit_delay_holds_back_the_next_request_start(fake_ollama) -> None:
    """Counted at the server, not timed: with four slots free and a delay between request starts far
    longer than the test, only the first request is sent; with no delay, four go at once."""
    fake_ollama.hang = True  # requests stay in flight until the job is cancelled

    async def sent(rate_limit_delay: float, expected: int) -> int:
        fake_ollama.reset_stats()
        job = asyncio.ensure_future(corral.batch_generate_async(
            [f"q{i}" for i in range(6)], model="llama3.2", servers=[fake_ollama.url],
            max_concurrent=4, rate_limit_delay=rate_limit_delay))
        try:
            for _ in range(1000):  # up to ~10 s for the expected requests to arrive
                if len(fake_ollama.requests) >= expected or job.done():
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # room for more starts, were the delay ignored
            return len(fake_ollama.requests)
        finally:
            job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await job

    assert asyncio.run(sent(3600, 1)) == 1
    assert asyncio.run(sent(0, 4)) == 4


def test_sync_api_works_inside_a_running_event_loop(fake_ollama) -> None:
    async def notebook_cell() -> list[dict]:
        return corral.batch_generate(["a", "b"], model="llama3.2", servers=[fake_ollama.url])

    results = asyncio.run(notebook_cell())
    assert [r["response"] for r in results] == ["echo: a", "echo: b"]


def test_async_twin(fake_ollama) -> None:
    results = asyncio.run(corral.batch_generate_async(["a"], model="llama3.2", servers=fake_ollama.url))
    assert results[0]["response"] == "echo: a"


def test_default_slots_follow_what_the_server_reports(fake_ollama_factory) -> None:
    llama = fake_ollama_factory(api="openai", llamacpp=True, slots=3, strict_models=False)
    plain = fake_ollama_factory()
    configured = fake_ollama_factory()

    async def probe() -> list[int]:
        specs = [ServerSpec(llama.url, api="openai"), ServerSpec(plain.url),
                 ServerSpec(configured.url, max_concurrency=5)]
        async with corral.Engine(specs) as engine:
            return [s.slots for s in engine.servers]

    # llama.cpp: twice its /props total_slots, so its queue never runs dry; Ollama: 8; config wins.
    assert asyncio.run(probe()) == [6, 8, 5]
