"""One engine, several runs: what differs between runs (the answer check, the read-ahead window) is
an argument of ``Engine.run``, so nothing carries over from one run to the next."""

from __future__ import annotations

import asyncio
import dataclasses

from corral import ServerSpec
from corral.engine import Engine, EngineSettings
from corral.requests import Request
from corral.results import Outcome


def _requests(prefix: str, n: int) -> list[Request]:
    return [Request(index=0, id=f"{prefix}{i}", model="llama3.2",
                    messages=[{"role": "user", "content": f"{prefix}{i}"}]) for i in range(n)]


def test_an_answer_check_holds_for_its_run_only(fake_ollama) -> None:
    settings = EngineSettings(content_retries=1, hedge=False)
    before = dataclasses.replace(settings)
    checked: list[Outcome] = []
    plain: list[Outcome] = []

    def refuse_echoes(request: Request, reply: object) -> str | None:
        return "an echo, not an answer"

    async def main() -> Engine:
        async with Engine([ServerSpec(fake_ollama.url)], settings=settings) as engine:
            await engine.run(_requests("a", 3), checked.append, validate=refuse_echoes)
            await engine.run(_requests("b", 3), plain.append)
        return engine

    engine = asyncio.run(main())
    assert [o.error_kind for o in checked] == ["invalid_answer"] * 3
    assert [o.attempts for o in checked] == [2] * 3  # the ask and one re-ask (content_retries=1)
    assert all(o.ok and o.attempts == 1 for o in plain)
    assert engine.stats.sent == 3 and engine.stats.ok == 3  # the second run's own counters
    assert settings == before  # no run changed the engine's settings


def test_a_small_read_ahead_window_still_delivers_every_row_in_order(fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=4, latency=0.001)
    outcomes: list[Outcome] = []

    async def main() -> None:
        async with Engine([ServerSpec(server.url, max_concurrency=4)]) as engine:
            await engine.run(_requests("w", 50), outcomes.append, window=2)

    asyncio.run(main())
    assert [o.request.id for o in outcomes] == [f"w{i}" for i in range(50)]
    assert all(o.ok for o in outcomes)
    assert server.max_in_flight <= 2  # never more rows out than the window holds
