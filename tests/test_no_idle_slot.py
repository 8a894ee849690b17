"""No idle slot (issue 18, item 5): one request queued ahead per server, slots that do not pay
given back, the last rows left to faster servers, and `bench --sweep` on servers in parallel.

Every assertion is on counters (what the fakes saw at once, what the engine decided), never on
how long anything took.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral import ServerSpec
from corral.backends import BackendError, ServerInfo
from corral.config import parse_config
from corral.engine import Engine, EngineSettings
from corral.engine.costs import Speeds
from corral.engine.servers import ServerState, SlotControl
from corral.engine.tail import better_elsewhere
from corral.errors import ConfigError
from corral.requests import Request
from corral.results import Outcome
from tests.conftest import corral
from tests.fakes import Gauge


def _rows(n: int) -> list[Request]:
    return [Request(index=0, id=f"r{i}", model="llama3.2", messages=[{"role": "user", "content": f"q{i}"}])
            for i in range(n)]


def _run(specs: list[ServerSpec], rows: int, **settings: object) -> tuple[list[Outcome], Engine]:
    outcomes: list[Outcome] = []

    async def main() -> Engine:
        async with Engine(specs, settings=EngineSettings(**settings)) as engine:  # type: ignore[arg-type]
            await engine.run(_rows(rows), outcomes.append)
        return engine

    return outcomes, asyncio.run(main())


# -- one request queued ahead ------------------------------------------------------------------------
def test_a_configured_server_gets_one_request_queued_ahead_of_its_slots(fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=2, latency=0.02)
    outcomes, _ = _run([ServerSpec(server.url, max_concurrency=2)], 40, adaptive_slots=False, hedge=False)
    assert all(o.ok for o in outcomes) and len(server.requests) == 40
    assert server.max_in_flight == 2      # its slots, never more
    assert server.max_queued == 1         # and exactly one waiting for the next free one


@pytest.mark.parametrize("how", ["config", "concurrency"])
def test_no_request_queued_ahead_when_the_config_or_concurrency_says_so(fake_ollama_factory, how: str) -> None:
    server = fake_ollama_factory(slots=2, latency=0.02)
    if how == "config":
        spec, settings = ServerSpec(server.url, max_concurrency=2, queue_ahead=0), {"adaptive_slots": False}
    else:  # --concurrency N: N in flight, no more
        spec, settings = ServerSpec(server.url), {"concurrency": 2}
    outcomes, _ = _run([spec], 40, hedge=False, **settings)
    assert all(o.ok for o in outcomes)
    assert server.max_in_flight == 2 and server.max_queued == 0


def test_the_in_flight_counts_say_which_are_queued_ahead() -> None:
    state = ServerState(spec=ServerSpec("http://a:1"), backend=None, info=ServerInfo(),  # type: ignore[arg-type]
                        slots=2, ahead=1)
    state.in_flight = 2
    assert state.busy_text() == "2/2 busy" and state.queued_ahead == 0
    state.in_flight = 3
    assert state.busy_text() == "2/2 busy +1 queued" and state.queued_ahead == 1


def test_a_server_that_timed_out_gets_nothing_queued_ahead() -> None:
    state = ServerState(spec=ServerSpec("http://a:1"), backend=None, info=ServerInfo(),  # type: ignore[arg-type]
                        slots=2, ahead=1)
    state.on_failure(BackendError("HTTP 503", status=503, retryable=True))
    assert state.ahead == 1
    state.on_failure(BackendError("timed out after 0.5s", retryable=True, kind="timeout"))
    assert state.ahead == 0 and state.has_room("m") and state.max_tasks == 2


def test_config_queue_ahead_and_one_line_for_a_bad_value() -> None:
    cfg = parse_config({"servers": [{"url": "http://a:8000", "queue_ahead": 0}]})
    assert cfg.servers[0].queue_ahead == 0
    for bad in (-1, 65, 1.5, "1", True):
        with pytest.raises(ConfigError) as caught:
            parse_config({"servers": [{"url": "http://a:8000", "queue_ahead": bad}]})
        assert "queue_ahead must be a whole number from 0 to 64" in str(caught.value)
        assert "\n" not in str(caught.value)


# -- learnt slots give back what does not pay --------------------------------------------------------
def test_learnt_slots_of_a_two_slot_server_started_at_eight_settle_near_two() -> None:
    control = SlotControl(limit=8, ceiling=16)
    now = 0.0
    seen = []
    for _ in range(80):
        rate = 10.0 * min(control.limit, 2)   # work per second stops growing past 2 in flight
        for _ in range(control.period):
            now += 1 / rate
            control.on_answer(now, work_waiting=True)
        seen.append(control.limit)
    assert control.lowers >= 6                 # one slot at a time, from 8 to 2
    assert set(seen[-20:]) <= {1, 2, 3}, seen  # near its real slots, with a try either side
    assert seen[-20:].count(2) >= 14, seen


def test_configured_slots_are_never_given_back_for_want_of_gain() -> None:
    control = SlotControl(limit=4, ceiling=8, keep=4)
    now = 0.0
    for _ in range(40):
        for _ in range(control.period):
            now += 0.025                       # flat: more or fewer, the same work per second
            control.on_answer(now, work_waiting=True)
        assert control.limit >= 4
    assert control.lowers == 0


# -- the tail: the last rows to the servers that end them soonest ------------------------------------
def _state(url: str, slots: int) -> ServerState:
    return ServerState(spec=ServerSpec(url, models=("m",)), backend=None, info=ServerInfo(),  # type: ignore[arg-type]
                       slots=slots, ahead=1)


def test_a_slow_server_leaves_the_last_rows_to_faster_ones() -> None:
    slow, fast = _state("http://slow:1", 8), _state("http://fast:1", 4)
    speeds = Speeds()
    speeds.seconds_per_unit[(id(slow), "m")] = 0.1   # 100 ms a row
    speeds.seconds_per_unit[(id(fast), "m")] = 0.02  # 20 ms a row, 4 at once: 200 rows/s
    servers = [slow, fast]
    assert better_elsewhere(slow, servers, speeds, "m", 1.0, queued=1)       # 25 ms elsewhere
    assert not better_elsewhere(slow, servers, speeds, "m", 1.0, queued=40)  # 220 ms elsewhere
    assert not better_elsewhere(fast, servers, speeds, "m", 1.0, queued=1)
    fast.bench()
    assert not better_elsewhere(slow, servers, speeds, "m", 1.0, queued=1)   # no one else to take it
    assert not better_elsewhere(_state("http://new:1", 1), servers, speeds, "m", 1.0, queued=1)  # unknown


# -- bench --sweep: servers measured at the same time ------------------------------------------------
def _sweep_config(tmp_path: Path, urls: list[str], gpus: list[int | None]) -> Path:
    lines = ['model = "llama3.2"']
    for url, gpu in zip(urls, gpus):
        lines += ["[[servers]]", f'url = "{url}"'] + ([f"gpu = {gpu}"] if gpu is not None else [])
    path = tmp_path / "cluster.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("own_gpus", [True, False])
def test_bench_sweeps_servers_with_their_own_gpus_at_the_same_time(tmp_path: Path, fake_ollama_factory,
                                                                  own_gpus: bool) -> None:
    gauge = Gauge()
    servers = [fake_ollama_factory(slots=2, latency=0.05) for _ in range(3)]
    for server in servers:
        server.gauge = gauge
    config = _sweep_config(tmp_path, [s.url for s in servers], [0, 1, 2] if own_gpus else [None] * 3)
    # Before the sweep, the figures phase sends each server one request at a time (3 at most in
    # all); the sweep's level 2 holds 2 on a server: 6 across the fleet only when in parallel.
    done = corral("bench", "--config", str(config), "--models", "llama3.2", "--runs", "1",
                  "--sweep", "2", "--json", "figures.json", cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert all(s.max_in_flight <= 2 for s in servers)  # each server: its level, never more
    if own_gpus:
        assert gauge.peak > 3    # more in flight than one server's sweep or the figures phase holds
    else:
        assert gauge.peak <= 3   # the same host and maybe one GPU: one server after another
