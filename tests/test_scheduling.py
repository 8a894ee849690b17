"""Issue #10: length-aware order, tail hedging, dynamic timeouts (and their bookkeeping).

No timed assertions that flake on a loaded machine: the fakes' latencies are lower bounds that
asyncio.sleep guarantees, and comparisons have wide margins.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from corral.config import ServerSpec
from corral.engine import Engine, EngineSettings, RetryPolicy
from corral.engine.costs import Speeds, TimeoutPolicy, hedge_gain
from corral.engine.queue import IDLE, WorkQueue
from corral.engine.servers import SlotControl
from corral.requests import Request
from corral.results import Outcome
from corral.store import Store
from tests.conftest import corral, read_jsonl, write_jsonl


def _request(i: int, prompt: str = "hi", model: str = "llama3.2", **options: Any) -> Request:
    return Request(index=i, id=f"r{i}", model=model, messages=[{"role": "user", "content": prompt}],
                   options=dict(options))


# -- cost estimate and order ----------------------------------------------------------------------
def test_cost_counts_num_predict_then_prompt_then_the_models_learnt_output() -> None:
    speeds = Speeds()
    short, long_ = _request(0, num_predict=50), _request(1, num_predict=800)
    assert speeds.cost(long_) > speeds.cost(short)
    # same num_predict: the longer prompt costs more, but a prompt token less than an output one
    wordy = _request(2, "w" * 4000, num_predict=50)
    assert speeds.cost(short) < speeds.cost(wordy) < speeds.cost(long_)
    # no num_predict: the model's observed output length, learnt from answers
    free = _request(3, model="m")
    before = speeds.cost(free)
    for _ in range(30):
        speeds.observe(1, free, before, 1.0, output_tokens=2000)
    assert speeds.cost(free) > 4 * before
    # -1 (unlimited) says nothing about length
    assert speeds.cost(_request(4, model="m", num_predict=-1)) == speeds.cost(free)


def test_queue_leaves_longest_first_and_retries_before_all() -> None:
    async def main() -> list[str]:
        queue: WorkQueue[tuple[str, float]] = WorkQueue(lambda item: "m", lambda item: item[1])
        for item in [("a", 1), ("b", 50), ("c", 10), ("d", 50), ("e", 0)]:
            queue.put(item)
        queue.put(("retry", 0), front=True)
        taken = [queue.get_nowait(lambda m: True) for _ in range(6)]
        assert queue.get_nowait(lambda m: True) is None and len(queue) == 0
        return [name for name, _ in taken]  # type: ignore[misc]

    # retries first; then by cost, ties in arrival order
    assert asyncio.run(main()) == ["retry", "b", "d", "c", "a", "e"]


def test_queue_without_costs_keeps_input_order_and_wakes_idle_slots() -> None:
    async def main() -> None:
        queue: WorkQueue[str] = WorkQueue(lambda item: "m")
        waiter = asyncio.create_task(queue.get(lambda m: True))
        await asyncio.sleep(0)
        queue.wake_idle()
        assert await waiter is IDLE
        for name in "xyz":
            queue.put(name)
        assert [queue.get_nowait(lambda m: True) for _ in range(3)] == ["x", "y", "z"]

    asyncio.run(main())


# -- hedging and timeouts: the pure rules ---------------------------------------------------------
def test_hedge_gain_asks_for_a_clear_win() -> None:
    # holder expects 10 s, started 1 s ago: 9 s left; we would take 2 s -> gain 7
    assert hedge_gain(now=101, started=100, theirs=10, mine=2, margin=1.5) == 7
    # only a little faster: not worth a duplicate
    assert hedge_gain(now=101, started=100, theirs=3.5, mine=2, margin=1.5) is None
    # a gain too small to notice
    assert hedge_gain(now=100.1, started=100, theirs=0.4, mine=0.1, margin=1.5, min_gain=0.25) is None
    # overdue on its holder (stalled?): the longer it runs, the likelier a hedge
    assert hedge_gain(now=160, started=100, theirs=10, mine=2, margin=1.5) == 28
    # holder never answered anything: hedge once it has run longer than we would need, with margin
    assert hedge_gain(now=101, started=100, theirs=None, mine=2, margin=1.5) is None
    assert hedge_gain(now=105, started=100, theirs=None, mine=2, margin=1.5) == 3


def test_a_timeout_allows_for_the_longest_answer_seen_not_the_mean() -> None:
    """With no num_predict an answer may run to several times the model's mean: the embedded
    model's README example (answers of 22 to 491 tokens) lost two rows to timeouts taken from the
    mean on a busy machine. The timeout's estimate reads the longest answer the model has given."""
    speeds = Speeds()
    free = _request(0, model="m")
    for tokens in [100] * 9 + [1000] + [100] * 5:
        cost = speeds.cost(free)
        speeds.observe(1, free, cost, cost * 0.01, output_tokens=tokens)   # 10 ms per cost unit
    assert speeds.expected_output(free) < 400           # the mean, pulled back towards 100
    assert speeds.timeout_cost(free) >= 1000            # the longest seen
    expected = speeds.expected_seconds(1, "m", speeds.timeout_cost(free))
    assert expected is not None and expected >= 10.0   # 1000 tokens at 10 ms
    capped = _request(1, model="m", num_predict=50)     # a stated length is the length
    assert speeds.timeout_cost(capped) == speeds.cost(capped)


def test_timeout_policy_fixed_overrides_else_scaled_and_clamped() -> None:
    assert TimeoutPolicy(fixed=7).seconds(1000) == 7
    policy = TimeoutPolicy(floor=30, ceiling=900, factor=4, default=300)
    assert policy.seconds(None) == 300
    assert policy.seconds(1) == 30
    assert policy.seconds(20) == 80
    assert policy.seconds(10_000) == 900


# -- through the engine, against fake servers -----------------------------------------------------
class _Counting(Store):
    """A journal that counts what the engine asks it to record, per key."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.recorded: dict[str, int] = {}

    def record(self, outcome: Outcome) -> None:
        self.recorded[outcome.request.key] = self.recorded.get(outcome.request.key, 0) + 1
        super().record(outcome)


def _run(specs: list[ServerSpec], requests: list[Request], settings: EngineSettings,
         store: Store, window: int | None = None) -> tuple[list[Outcome], Engine, int]:
    """(outcomes, engine, tasks left over after the run): what happened, never how long it took."""
    outcomes: list[Outcome] = []

    async def main() -> tuple[Engine, int]:
        async with Engine(specs, store, settings) as engine:
            await engine.run(requests, outcomes.append, total=len(requests), window=window)
            await asyncio.sleep(0.05)
            leftover = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        return engine, len(leftover)

    engine, leftover = asyncio.run(main())
    return outcomes, engine, leftover


def test_slow_server_holding_the_last_item_is_hedged_to_the_idle_fast_one(
        tmp_path: Path, fake_ollama_factory) -> None:
    fast = fake_ollama_factory(slots=1, latency=0.02)
    slow = fake_ollama_factory(slots=1, latency=3.0)
    specs = [ServerSpec(fast.url, max_concurrency=1), ServerSpec(slow.url, max_concurrency=1)]
    n = 20
    figures = {}
    answered_by: dict[bool, Counter[str]] = {}
    for hedge in (True, False):
        store = _Counting(tmp_path / f"hedge-{hedge}.db")
        requests = [_request(i, f"question {i:02d}") for i in range(n)]
        outcomes, engine, leftover = _run(specs, requests, EngineSettings(hedge=hedge), store)
        store.close()
        # the contracts: one outcome per request, in input order, one journal row per key
        assert [o.request.index for o in outcomes] == list(range(n))
        assert all(o.ok for o in outcomes)
        assert len(store.recorded) == n and set(store.recorded.values()) == {1}
        assert leftover == 0, "cancelled attempts must not leak tasks"
        slow_state = next(s for s in engine.servers if s.spec.url == slow.url)
        assert slow_state.stats.benched == 0 and slow_state.consecutive_failures == 0
        answered_by[hedge] = Counter(o.server for o in outcomes)
        figures[hedge] = engine.stats
    hedged, plain = figures[True], figures[False]
    assert hedged.hedged == 1 and hedged.hedge_wins == 1 and hedged.hedge_cancelled == 1
    assert plain.hedged == plain.hedge_wins == plain.hedge_cancelled == 0
    # Without hedging the slow server's one item is waited for; with it, the fast one answers it.
    # (Nothing is queued ahead on the slow one: its slots are still being learnt, see has_room.)
    slow_label, fast_label = slow.url.removeprefix("http://"), fast.url.removeprefix("http://")
    assert answered_by[False] == {slow_label: 1, fast_label: n - 1}, answered_by
    assert answered_by[True] == {fast_label: n}, answered_by


def test_long_items_start_first_so_they_do_not_end_the_job(fake_ollama_factory) -> None:
    seen: list[int] = []

    def latency(body: dict[str, Any]) -> float:
        seen.append(body["options"]["num_predict"])
        return 0.001

    server = fake_ollama_factory(slots=1, latency=latency)
    lengths = [10, 500, 20, 900, 30, 40]
    requests = [_request(i, num_predict=n) for i, n in enumerate(lengths)]
    outcomes, _, _ = _run([ServerSpec(server.url, max_concurrency=1)], requests, EngineSettings(),
                          Store(None), window=len(lengths))
    assert [o.request.index for o in outcomes] == list(range(len(lengths)))  # output order unchanged
    # the first one may leave before the rest are queued; after it, longest first
    assert seen[1:] == sorted(seen[1:], reverse=True), seen


def test_dynamic_timeout_ends_a_hung_request_long_before_the_fixed_default(fake_ollama_factory) -> None:
    server = fake_ollama_factory(
        slots=4, latency=lambda body: 20.0 if "hang" in body["messages"][-1]["content"] else 0.01)
    requests = [_request(i, f"q{i:02d}") for i in range(30)] + [_request(30, "hang")]
    settings = EngineSettings(timeout_floor=0.5, hedge=False, longest_first=False,
                              retry=RetryPolicy(max_attempts=1))
    outcomes, _, _ = _run([ServerSpec(server.url, max_concurrency=4)], requests, settings,
                                   Store(None))
    assert all(o.ok for o in outcomes[:30])
    # The fake answers "hang" after 20 s: a timeout means the dynamic one (floor 0.5 s) ended it,
    # not the old fixed 300 s default, which would have let it succeed.
    assert outcomes[30].error_kind == "timeout" and outcomes[30].attempts == 1


def test_cli_no_hedge_and_fixed_timeout(tmp_path: Path, fake_ollama) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"role": "user", "content": f"q {i}"} for i in range(5)])
    proc = corral("run", "p.jsonl", "--server", fake_ollama.url, "-m", "llama3.2", "-o", "out.jsonl",
                  "--no-hedge", "--timeout", "30", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 5


# -- slots learnt during the run (AIMD) -----------------------------------------------------------
def _feed(control: SlotControl, now: float, answers: int, rate: float, waiting: bool = True) -> float:
    for _ in range(answers):
        now += 1 / rate
        control.on_answer(now, work_waiting=waiting)
    return now


def test_slot_control_raises_while_throughput_rises_and_gives_back_what_does_not_pay() -> None:
    control = SlotControl(limit=2, ceiling=4)
    now = _feed(control, 0.0, 4, rate=10)           # first period: a baseline, then try one more
    assert control.limit == 3
    now = _feed(control, now, control.period, rate=15)  # it paid: keep it, try another
    assert control.limit == 4
    now = _feed(control, now, control.period, rate=15)  # no gain: give it back and rest
    assert control.limit == 3
    now = _feed(control, now, control.period * control.rest_periods, rate=15)
    assert control.limit == 3                       # resting
    _feed(control, now, control.period * 3, rate=15, waiting=False)
    assert control.limit == 3                       # nothing waiting: no reason to try more
    assert control.raises == 2


def test_slot_control_halves_on_busy_once_per_burst_and_never_below_one() -> None:
    control = SlotControl(limit=8, ceiling=16)
    control.on_busy(9.5, 10.0)
    control.on_busy(9.9, 10.1)  # sent before the cut: the same burst
    assert control.limit == 4 and control.cuts == 1
    for t in range(3):
        control.on_busy(11.0 + 2 * t, 12.0 + 2 * t)
    assert control.limit == 1


def test_busy_server_slots_are_cut_and_every_row_still_answers(fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=2, max_queue=0, latency=0.02)  # a third request gets 503
    requests = [_request(i, f"q{i:03d}") for i in range(120)]
    settings = EngineSettings(retry=RetryPolicy(base=0.01, cap=0.05))
    outcomes, engine, _ = _run([ServerSpec(server.url, max_concurrency=8)], requests, settings,
                                  Store(None))
    assert all(o.ok for o in outcomes)
    control = engine.servers[0].controls["llama3.2"]
    assert control.cuts >= 1 and control.limit <= 4, (control.cuts, control.limit)


def test_slot_control_doubles_its_step_while_tries_pay_then_settles_at_the_servers_slots() -> None:
    """Configured with 4, really 12 slots (work per second grows with slots up to 12)."""
    control = SlotControl(limit=4, ceiling=16)
    now = 0.0
    seen = [control.limit]
    for _ in range(40):
        now = _feed(control, now, control.period, rate=10.0 * min(control.limit, 12))
        seen.append(control.limit)
    assert seen[:5] == [4, 5, 7, 11, 16], seen  # +1, +2, +4, then the ceiling
    assert seen[5] == 12, seen  # of the 5 added, the gain showed 1 was real: kept 12
    # settled: 12, with a try of 13 now and then that is given back, and a try of 11 after it
    # (fewer did less work: the slot is taken back)
    assert set(seen[-12:]) <= {11, 12, 13} and seen[-12:].count(12) >= 8, seen
    assert control.lowers == 0  # no slot given back for good: every one of the 12 pays


def test_slot_control_measures_work_not_answers() -> None:
    """Late in a longest-first job answers get shorter: more answers per second is no gain."""
    control = SlotControl(limit=2, ceiling=4)
    now = 0.0
    for _ in range(control.period):  # a base period: 10 answers/s of 100 units each
        now += 0.1
        control.on_answer(now, work_waiting=True, units=100)
    assert control.limit == 3  # first try
    for _ in range(control.period):  # twice the answers per second, but half the units each
        now += 0.05
        control.on_answer(now, work_waiting=True, units=50)
    assert control.limit == 2 and control.raises == 1  # no more work per second: given back


def test_slots_are_learnt_per_model_on_one_server(fake_ollama_factory) -> None:
    """Ollama runs each loaded model with its own parallel slots: a model that answers "busy"
    is cut, the other keeps its slots, and the server never gets more than its ceiling."""
    server = fake_ollama_factory(models=("small", "big"), slots={"small": 8, "big": 2}, max_queue=0,
                                 latency=0.02)
    requests = [_request(i, f"q{i:03d}", model=("big" if i % 2 else "small")) for i in range(200)]
    settings = EngineSettings(retry=RetryPolicy(base=0.01, cap=0.05))
    outcomes, engine, _ = _run([ServerSpec(server.url, max_concurrency=6)], requests, settings,
                                  Store(None))
    assert all(o.ok for o in outcomes)
    state = engine.servers[0]
    big, small = state.controls["big"], state.controls["small"]
    assert big.cuts >= 1 and big.limit <= 3, (big.cuts, big.limit)
    # "small" was never refused, so it keeps more slots than "big". (Its own cuts are not asserted:
    # they also follow measured throughput, which a loaded machine moves.)
    assert small.limit > big.limit, (small.cuts, small.limit, big.limit)
    assert server.status_counts[503] >= 1  # "big" was refused; "small" never was
    assert server.max_in_flight <= state.ceiling == 12


def test_split_mode_rows_are_hedged_with_the_model_they_started_on(fake_ollama_factory) -> None:
    fast = fake_ollama_factory(models=("a", "b"), slots=1, latency=0.02)
    slow = fake_ollama_factory(models=("a", "b"), slots=1, latency=3.0)
    # nothing queued ahead: one slot task per server
    specs = [ServerSpec(fast.url, max_concurrency=1, queue_ahead=0),
             ServerSpec(slow.url, max_concurrency=1, queue_ahead=0)]
    requests = [Request(index=i, id=f"r{i}", model="a|b", model_choices=("a", "b"),
                        messages=[{"role": "user", "content": f"question {i:02d}"}]) for i in range(20)]
    # fixed slots: one slot task per server, so each server answers with the group's first model
    settings = EngineSettings(adaptive_slots=False)
    outcomes, engine, leftover = _run(specs, requests, settings, Store(None))
    assert [o.request.index for o in outcomes] == list(range(20)) and all(o.ok for o in outcomes)
    assert engine.stats.hedged == 1 and engine.stats.hedge_wins == 1, engine.stats
    assert {o.request.model for o in outcomes} == {"a"}  # the hedge kept the model its row started on
    assert leftover == 0
    # not waiting out the slow server's 3 s: every row was answered by the fast one
    assert {o.server for o in outcomes} == {fast.url.removeprefix("http://")}


def test_hedge_option_in_batch_generate_and_the_config(tmp_path: Path, fake_ollama_factory) -> None:
    """The last row sits on the slow server: hedged (the default), the fast one answers it;
    ``hedge=False`` or the config's ``hedge = false`` waits for the slow one; ``--hedge`` wins."""
    import orjson

    import corral as api
    fast = fake_ollama_factory(slots=1, latency=0.02)
    slow = fake_ollama_factory(slots=1, latency=1.5)
    servers = [fast.url, slow.url]
    prompts = [f"question {i:02d}" for i in range(12)]

    slow_label = ServerSpec(slow.url).label

    def slow_rows(rows: list[dict[str, Any]]) -> int:
        return sum(row["server"] == slow_label for row in rows)

    hedged = api.batch_generate(prompts, "llama3.2", 1, 0, servers=servers, manifest=tmp_path / "on.json")
    plain = api.batch_generate(prompts, "llama3.2", 1, 0, servers=servers, hedge=False,
                               manifest=tmp_path / "off.json")
    assert all(r["success"] for r in hedged + plain)
    assert slow_rows(plain) == 1 and slow_rows(hedged) == 0  # the slow one's row, answered elsewhere
    assert orjson.loads((tmp_path / "on.json").read_bytes())["engine"]["hedge"] is True
    off = orjson.loads((tmp_path / "off.json").read_bytes())
    assert off["engine"]["hedge"] is False and off["engine"]["max_slots"] == 1
    assert [s["learnt_slots"] for s in off["per_server"]] == [{"llama3.2": 1}] * 2  # max_concurrent=1: a cap

    config = tmp_path / "cluster.toml"
    config.write_text(f'model = "llama3.2"\nhedge = false\nmax_concurrency = 1\n'
                      f'[[servers]]\nurl = "{fast.url}"\n[[servers]]\nurl = "{slow.url}"\n')
    from_config = api.batch_generate(prompts, config=str(config), manifest=tmp_path / "cfg.json")
    assert slow_rows(from_config) == 1
    assert orjson.loads((tmp_path / "cfg.json").read_bytes())["engine"]["hedge"] is False

    write_jsonl(tmp_path / "p.jsonl", [{"role": "user", "content": p} for p in prompts])
    for flag, expected in ((None, False), ("--hedge", True)):
        out = f"out-{flag}.jsonl"
        proc = corral("run", "p.jsonl", "--config", "cluster.toml", "-o", out, *([flag] if flag else []),
                      cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        manifest = orjson.loads((tmp_path / f"{out}.manifest.json").read_bytes())
        assert manifest["engine"]["hedge"] is expected


def test_config_hedge_must_be_a_boolean(tmp_path: Path) -> None:
    import pytest

    from corral.config import load_config
    from corral.errors import ConfigError
    path = tmp_path / "c.toml"
    path.write_text('hedge = "no"\n[[servers]]\nurl = "http://127.0.0.1:9"\n')
    with pytest.raises(ConfigError, match="hedge must be true or false"):
        load_config(str(path))
    path.write_text('hedge = false\n[[servers]]\nurl = "http://127.0.0.1:9"\n')
    assert load_config(str(path)).hedge is False
