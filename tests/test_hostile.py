"""Issue #17, part A: hostile answers and absurd settings end every row or the run with one clear line.

The cases themselves are in ``tests/scenarios_hostile.py`` (also run by ``benchmarks/faults.py``);
here each runs on its own, and a fault is injected at each step between an answer and the journal.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from corral import ServerSpec, batch_generate
from corral.engine import Engine, EngineSettings
from corral.errors import RunAborted, UsageError
from corral.limits import MAX_SLOTS_PER_SERVER
from corral.requests import Request
from corral.results import Outcome
from tests.fakes import FakeServer
from tests.scenarios_hostile import CASES


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", [case for _, case in CASES], ids=[name for name, _ in CASES])
def test_hostile_case(tmp_path: Path, case: Any) -> None:
    line = case(tmp_path, 12)
    assert line and "Traceback" not in line


class Injected(RuntimeError):
    pass


def _raise(*_: Any, **__: Any) -> Any:
    raise Injected("injected fault")


# Every step from an answer to the journal: a fault in one ends the row (row) or the run (run).
STEPS = [
    ("the answer check", "corral.engine.run.json_answer_problem", "row"),
    ("the speed estimate", "corral.engine.costs.Speeds.observe", "row"),
    ("the slot control", "corral.engine.servers.SlotControl.on_answer", "row"),
    ("the server's health", "corral.engine.servers.ServerState.on_success", "row"),
    ("the retry's wait", "corral.engine.retry.RetryPolicy.delay", "row"),
    ("the busy accounting", "corral.engine.servers.SlotControl.on_busy", "row"),
    ("the journal", "corral.store.Store.record", "run"),
    ("the delivery", "corral.api._Collect.write", "run"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("step, target, ends", STEPS, ids=[s[0] for s in STEPS])
def test_a_fault_at_each_step_ends_the_row_or_the_run(fake_ollama: FakeServer, monkeypatch: pytest.MonkeyPatch,
                                                      step: str, target: str, ends: str) -> None:
    rows = 12
    if "retry" in step or "busy" in step:
        fake_ollama.fail_next(rows, status=503)  # every row's first answer is "busy": the error path
    monkeypatch.setattr(target, _raise)
    prompts = [f"prompt {i}" for i in range(rows)]
    if ends == "run":
        with pytest.raises(RunAborted, match="the run stopped: .*Injected: injected fault"):
            batch_generate(prompts, model="llama3.2", servers=[fake_ollama.url], max_concurrent=4)
        return
    results = batch_generate(prompts, model="llama3.2", servers=[fake_ollama.url], max_concurrent=4)
    assert [r["prompt"] for r in results] == prompts  # every row, once, in order
    assert all(not r["success"] and r["error"].startswith("internal error handling the answer from ")
               and r["error"].endswith("Injected: injected fault") for r in results), results[0]


def test_slot_tasks_start_only_as_slots_are_used(fake_ollama: FakeServer) -> None:
    """The most slots a server may have; only as many tasks as rows ever run at once are started."""
    most: list[int] = []

    def count(outcome: Outcome) -> None:
        assert outcome.ok, outcome.error
        most.append(sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("corral-127.0.0.1")))

    async def main() -> None:
        settings = EngineSettings(concurrency=MAX_SLOTS_PER_SERVER)
        async with Engine([ServerSpec(fake_ollama.url)], settings=settings) as engine:
            requests = [Request(index=0, id=str(i), model="llama3.2",
                                messages=[{"role": "user", "content": f"p{i}"}]) for i in range(10)]
            stats = await engine.run(requests, count)
            assert stats.ok == 10

    asyncio.run(main())
    assert len(most) == 10 and max(most) <= 11, most


def test_slots_above_the_cap_are_refused_everywhere(tmp_path: Path) -> None:
    from corral.config import parse_config
    from corral.errors import ConfigError
    from corral.settings import resolve

    with pytest.raises(UsageError, match="concurrency must be at most 4096"):
        EngineSettings(concurrency=MAX_SLOTS_PER_SERVER + 1)
    with pytest.raises(UsageError, match="workers must be at most 4096"):
        resolve(servers=["127.0.0.1:1"], workers=10 ** 9)
    with pytest.raises(ConfigError, match="max_concurrency must be at most 4096"):
        parse_config({"servers": [{"url": "http://h:1", "max_concurrency": 10 ** 12}]})
    with pytest.raises(UsageError, match="max_busy_seconds must be a finite number"):
        resolve(servers=["127.0.0.1:1"], max_busy_seconds=float("inf"))
