"""Rate limits of hosted endpoints (issue 18, item 4): rpm and tpm per server over any 60-second
window, the server's x-ratelimit-* headers and a 429's Retry-After.

The limiter's decisions are tested with an injected clock (``now`` is an argument); end to end, the
fake must get every row and the limiter's log must never have held more than the limit, with the
window shrunk so the test does not wait a minute. Nothing here reads how long anything took.
"""

from __future__ import annotations

import asyncio
import json
import random

import pytest

from corral import ServerSpec
from corral.backends import BackendError
from corral.backends.rate_headers import RateHeaders, parse_duration, rate_headers
from corral.config import parse_config
from corral.engine import Engine, EngineSettings, rates
from corral.engine.costs import Speeds
from corral.engine.rates import RateLimiter, after_attempt, estimate_tokens
from corral.errors import ConfigError, UsageError
from corral.http import Headers
from corral.requests import Request
from corral.results import Outcome
from corral.settings import resolve
from tests.conftest import corral, write_jsonl


def _request(text: str = "x" * 40, **options: int) -> Request:
    return Request(index=0, id="r", model="m", messages=[{"role": "user", "content": text}],
                   options=dict(options))


# -- the limiter's decisions, on an injected clock --------------------------------------------------
def test_rpm_holds_in_every_60_second_window_not_per_clock_minute() -> None:
    limiter = RateLimiter(rpm=120)  # one every 0.5 s at most, 120 in any 60 s
    admitted: list[float] = []
    now = 0.0
    rng = random.Random(7)
    while now < 300:
        if limiter.admit(now, 1) is not None:
            admitted.append(now)
        now += rng.choice((0.01, 0.1, 0.37, 1.3))
    assert admitted and limiter.refused > 0
    # Every window starting at an admitted start (the worst windows start at one) holds <= 120.
    for i, start in enumerate(admitted):
        in_window = sum(1 for t in admitted[i:] if t < start + 60)
        assert in_window <= 120
        in_second = sum(1 for t in admitted[i:] if t < start + 1)
        assert in_second <= 2
    assert limiter.peak_requests <= 120


def test_starts_are_spread_evenly_and_the_window_holds_across_clock_minutes() -> None:
    limiter = RateLimiter(rpm=60)
    assert limiter.admit(10.0, 1) is not None
    assert limiter.admit(10.5, 1) is None          # spread: one every 60/60 = 1 s
    assert limiter.wait(10.5) == pytest.approx(0.5, abs=0.01)
    assert limiter.admit(11.0, 1) is not None
    for second in range(12, 70):                   # 60 starts from 10 to 69
        assert limiter.admit(float(second), 1) is not None
    assert limiter.admit(70.0, 1) is not None      # 10.0 has just left the window (70 - 60)
    assert limiter.peak_requests == 60
    burst = RateLimiter(rpm=600)                   # 10 a second: a tenth of a second apart
    assert [burst.admit(0.05 * i, 1) is not None for i in range(4)] == [True, False, True, False]


def test_tpm_counts_estimates_then_the_answers_usage() -> None:
    limiter = RateLimiter(tpm=1000)
    first = limiter.admit(0.0, 600)
    assert first is not None
    assert limiter.admit(1.0, 500) is None          # 1,100 > 1,000
    limiter.settle(first, 300)                      # the answer used fewer
    assert limiter.admit(2.0, 500) is not None      # 800
    assert limiter.admit(3.0, 300) is None
    assert limiter.wait(3.0, 300) == pytest.approx(57.0, abs=0.01)  # until the first leaves at 60


def test_a_request_larger_than_the_token_budget_goes_alone() -> None:
    limiter = RateLimiter(tpm=100)
    assert limiter.admit(0.0, 50) is not None
    assert limiter.admit(1.0, 500) is None          # waits for an empty window...
    assert limiter.admit(60.01, 500) is not None    # ...then goes, or it never would


def test_token_estimates_use_max_tokens_else_the_mean_answer() -> None:
    speeds = Speeds()
    assert estimate_tokens(_request("x" * 400, num_predict=100), speeds) == 101 + 100
    speeds.output_tokens["m"] = 40.0
    assert estimate_tokens(_request("x" * 400), speeds) == 101 + 40


@pytest.mark.parametrize(("text", "seconds"), [
    ("6m0s", 360.0), ("1s", 1.0), ("250ms", 0.25), ("1m30.5s", 90.5), ("2h", 7200.0), ("0.5", 0.5),
    ("", None), ("soon", None), ("5x", None), ("1s2", None), ("100h", None),
])
def test_openai_reset_durations(text: str, seconds: float | None) -> None:
    assert parse_duration(text) == seconds


def test_headers_that_say_nothing_is_left_pause_until_the_reset() -> None:
    headers = Headers({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "6m0s",
                       "x-ratelimit-remaining-tokens": "149984", "x-ratelimit-reset-tokens": "6ms"})
    rate = rate_headers(headers)
    assert rate == RateHeaders(0, 149984, 360.0, 0.006)
    assert rate_headers(Headers({"content-type": "application/json"})) is None
    limiter = RateLimiter()
    limiter.on_headers(100.0, rate, next_tokens=50)
    assert limiter.wait(100.0) == pytest.approx(360.0, abs=0.01)
    assert limiter.wait(460.01) == 0.0
    low = RateLimiter()
    low.on_headers(0.0, RateHeaders(remaining_requests=10, remaining_tokens=20, reset_tokens=2.0),
                   next_tokens=50)                  # 20 tokens left, the next needs ~50
    assert low.wait(1.0) == pytest.approx(1.0, abs=0.01)


def test_a_429_retry_after_pauses_the_whole_server() -> None:
    limiter = RateLimiter()
    busy = BackendError("HTTP 429", status=429, retryable=True, retry_after=7.0)
    after_attempt(limiter, 50.0, None, None, busy, 10)
    assert limiter.wait(50.0) == pytest.approx(7.0, abs=0.01) and limiter.pauses == 1
    capped = RateLimiter()  # Retry-After: 100000 pauses no longer than a row may wait on "busy"
    after_attempt(capped, 0.0, None, None,
                  BackendError("HTTP 429", status=429, retryable=True, retry_after=100000.0), 10, max_busy=1.0)
    assert capped.wait(0.0) == pytest.approx(1.0, abs=0.01)
    unavailable = BackendError("HTTP 503", status=503, retryable=True, retry_after=30.0)
    other = RateLimiter()
    after_attempt(other, 50.0, None, None, unavailable, 10)
    assert other.wait(50.0) == 0.0 and other.pauses == 0  # a 503's wait is the row's, not the server's


# -- where the limits come from --------------------------------------------------------------------
def test_config_rpm_and_tpm_per_server_and_one_line_for_a_bad_value() -> None:
    cfg = parse_config({"servers": [{"url": "http://a:8000", "api": "openai", "rpm": 500, "tpm": 30000}]})
    assert (cfg.servers[0].rpm, cfg.servers[0].tpm) == (500, 30000)
    for bad in (0, -5, 1.5, "60", True):
        with pytest.raises(ConfigError) as caught:
            parse_config({"servers": [{"url": "http://a:8000", "rpm": bad}]})
        assert "rpm must be a positive whole number per minute" in str(caught.value)
        assert "\n" not in str(caught.value)


def test_rpm_and_tpm_keywords_apply_to_servers_without_their_own() -> None:
    settings = resolve(servers=["http://a:8000", ServerSpec("http://b:8000", rpm=5)], api="openai",
                       rpm=100, tpm=9000)
    assert [(s.rpm, s.tpm) for s in settings.servers] == [(100, 9000), (5, 9000)]
    with pytest.raises(UsageError, match="rpm must be a positive whole number"):
        resolve(servers=["http://a:8000"], rpm=0)


def test_the_rpm_flag_is_checked_with_its_name(tmp_path) -> None:
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": "hi"}])
    result = corral("run", str(prompts), "-o", str(tmp_path / "out.jsonl"), "-s", "http://127.0.0.1:9",
                    "-m", "m", "--rpm", "0")
    assert result.returncode == 2
    assert "--rpm must be a positive whole number per minute" in result.stderr


def test_the_summary_and_the_manifest_say_what_the_limit_did(tmp_path, fake_ollama_factory) -> None:
    # 5 rows at --rpm 600: one start every 0.1 s, so the limiter holds slots back; its counters,
    # not how long it took, are what the summary's caption and the manifest report.
    server = fake_ollama_factory(api="openai")
    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"prompt": f"q{i}"} for i in range(5)])
    output = tmp_path / "out.jsonl"
    result = corral("run", str(prompts), "-o", str(output), "-s", server.url, "--api", "openai",
                    "-m", "llama3.2", "--rpm", "600", "--no-hedge")
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.with_name("out.jsonl.manifest.json").read_text())["per_server"][0]["rate_limit"]
    assert figures["rpm"] == 600 and figures["tpm"] is None
    assert figures["started"] == 5 and figures["refused"] == 0 and figures["held"] >= 1
    assert figures["peak_requests_per_minute"] == 5
    assert "600 rpm: 5 started, held back" in " ".join(result.stderr.split())


# -- end to end: the engine keeps to them ----------------------------------------------------------
def _rows(n: int) -> list[Request]:
    return [Request(index=0, id=f"r{i}", model="llama3.2", messages=[{"role": "user", "content": f"q{i}"}])
            for i in range(n)]


def test_an_rpm_server_gets_every_row_and_never_more_than_rpm_in_a_window(fake_ollama_factory,
                                                                        monkeypatch) -> None:
    # A minute shrunk to half a second, so 12 rows at rpm=4 take three windows, not three minutes.
    monkeypatch.setattr(rates, "WINDOW_SECONDS", 0.5)
    server = fake_ollama_factory(api="openai")
    outcomes: list[Outcome] = []

    async def main() -> Engine:
        async with Engine([ServerSpec(server.url, api="openai", rpm=4)],
                          settings=EngineSettings(hedge=False)) as engine:
            await engine.run(_rows(12), outcomes.append)
        return engine

    engine = asyncio.run(main())
    assert all(o.ok for o in outcomes) and len(outcomes) == 12
    assert len(server.requests) == 12
    limiter = engine.servers[0].rates
    assert limiter is not None
    assert limiter.admitted == 12 and limiter.held > 0   # it did hold starts back
    assert limiter.peak_requests <= 4


def test_the_answers_rate_headers_reach_the_limiter(fake_ollama_factory) -> None:
    server = fake_ollama_factory(api="openai")
    server.answer_headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20ms",
                             "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "1s"}
    outcomes: list[Outcome] = []

    async def main() -> Engine:
        async with Engine([ServerSpec(server.url, api="openai")],
                          settings=EngineSettings(hedge=False)) as engine:
            await engine.run(_rows(6), outcomes.append)
        return engine

    engine = asyncio.run(main())
    assert all(o.ok for o in outcomes) and len(server.requests) == 6
    limiter = engine.servers[0].rates   # made on the first answer that spoke of limits
    assert limiter is not None and not limiter.limits
    assert limiter.pauses >= 1
