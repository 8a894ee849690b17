"""Issue 18, items 1 and 3: progress that follows the rows really answered, and servers that come
and go while a job runs (down at the start, answering only "busy", added or removed on SIGHUP).

Counters and what was sent, never durations: the fakes' latencies only make an order certain.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import Any

import pandas as pd

from corral import batch_generate
from corral.config import ServerSpec
from corral.engine import Engine, EngineSettings, JobStats
from corral.progress import summary_table
from corral.requests import Request
from corral.results import Outcome
from corral.store import Store
from corral.tables.fill import fill_missing_fields
from tests.conftest import corral, journal_rows, read_jsonl, start_corral, wait_for, write_prompts


def _requests(n: int, prefix: str = "question") -> list[Request]:
    return [Request(index=i, id=f"r{i}", model="llama3.2",
                    messages=[{"role": "user", "content": f"{prefix} {i}"}]) for i in range(n)]


def _slow_first(seconds: float, fast: float = 0.0) -> Any:
    """A per-prompt latency: the first row ("... 0") takes ``seconds``, the others ``fast``."""
    return lambda body: seconds if json.dumps(body).find(' 0"') >= 0 else fast


# -- item 1: progress that tells the truth ----------------------------------------------------------
def test_done_follows_the_rows_answered_not_the_input_order(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=4, latency=_slow_first(30.0))
    n = 40
    delivered: list[Outcome] = []
    seen: dict[str, int] = {}

    class Journal(Store):
        recorded = 0

        def record(self, outcome: Outcome) -> None:
            super().record(outcome)
            Journal.recorded += 1

    async def main() -> None:
        store = Journal(tmp_path / "j.db")
        async with Engine([ServerSpec(server.url)], store, EngineSettings(hedge=False)) as engine:
            run = asyncio.create_task(engine.run(_requests(n), delivered.append, total=n))
            while Journal.recorded < n - 1:  # every row but the slow first one is journaled
                await asyncio.sleep(0.01)
            seen.update(done=engine.stats.done, ok=engine.stats.ok, journaled=Journal.recorded,
                        delivered=len(delivered))
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
        store.close()

    asyncio.run(main())
    # In input order nothing could be passed on yet (row 0 holds the rest back), but 39 rows ended.
    assert seen == {"done": n - 1, "ok": n - 1, "journaled": n - 1, "delivered": 0}, seen


def test_eta_weighs_the_estimated_cost_left_not_the_rows_left() -> None:
    # One long row (cost 300) ended in 10 s; three short ones (cost 10 each) are left, nothing unread:
    # by rows, 3 rows at 0.1 row/s = 30 s; by cost, 30 units at 30 units/s = 1 s.
    stats = JobStats(total=4, done=1, ok=1, read=4, queued=4, work_done=300.0, work_left=30.0,
                     started=0.0, finished=10.0)
    assert stats.eta_seconds() == 1.0
    # Rows not read yet are taken to cost what the rows read so far cost on average.
    stats = JobStats(total=8, done=1, ok=1, read=4, queued=4, work_done=300.0, work_left=30.0,
                     started=0.0, finished=10.0)
    assert stats.eta_seconds() == (30.0 + 4 * 330.0 / 4) / 30.0
    assert JobStats(total=None, done=1, work_done=1.0).eta_seconds() is None
    assert JobStats(total=3, done=0, queued=3, work_left=3.0).eta_seconds() is None  # nothing ended yet


def test_after_ctrl_c_the_manifest_counts_the_journaled_rows(tmp_path: Path, fake_ollama_factory) -> None:
    server = fake_ollama_factory(slots=4, latency=_slow_first(60.0, 0.02))
    write_prompts(tmp_path / "p.jsonl", 60)
    run = start_corral(["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
                        "--no-hedge", "--progress", "none"], tmp_path)
    db = tmp_path / "out.jsonl.corral.db"
    try:
        wait_for(lambda: journal_rows(db) >= 59 or run.poll() is not None, 120, "every row but the first")
        assert run.poll() is None, run.communicate()
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 130, err[-2000:]
    counts = json.loads((tmp_path / "out.jsonl.manifest.json").read_text())["counts"]
    assert counts["done"] == counts["ok"] == journal_rows(db) == 59, counts
    status = json.loads(corral("status", "out.jsonl", "--json", cwd=tmp_path).stdout.splitlines()[-1])
    assert status["done"] == status["journal_rows"]["ok"] == 59, status


def test_fill_knows_how_many_requests_it_will_send(tmp_path: Path, fake_ollama_factory) -> None:
    """A fill sends only rows with something missing: its total is planned as it reads (no total
    was why its ETA was always "?")."""
    server = fake_ollama_factory(responder=lambda body: '{"City": "Paris"}')
    df = pd.DataFrame({"title_en": [f"event {i}" for i in range(6)],
                       "City": ["Rome", None, "Oslo", None, None, "Bonn"]})
    out = fill_missing_fields(df, json_fields=("City",), servers=[server.url], store=tmp_path / "f.db",
                              progress=False, manifest=tmp_path / "fill.json", chunk_size=2)
    assert list(out["computed_City"].fillna("")) == ["", "Paris", "", "Paris", "Paris", ""]
    counts = json.loads((tmp_path / "fill.json").read_text())["counts"]
    assert counts["total"] == counts["done"] == counts["ok"] == 3, counts


def test_batch_generate_shows_progress_like_the_other_fronts(fake_ollama_factory, capsys, monkeypatch) -> None:
    monkeypatch.setenv("CORRAL_LOG_INTERVAL", "0.05")
    server = fake_ollama_factory(slots=1, latency=0.2)
    rows = batch_generate([f"say {i}" for i in range(4)], model="llama3.2", servers=[server.url],
                          progress="log")
    assert all(r["success"] for r in rows)
    assert "/4 done" in capsys.readouterr().err
    batch_generate(["quiet"], model="llama3.2", servers=[server.url], progress=False)
    assert "done" not in capsys.readouterr().err


def test_summary_counts_hedged_and_cancelled_copies_per_server(fake_ollama_factory) -> None:
    fast = fake_ollama_factory(slots=1, latency=0.02)
    slow = fake_ollama_factory(slots=1, latency=3.0)
    specs = [ServerSpec(fast.url, max_concurrency=1), ServerSpec(slow.url, max_concurrency=1)]
    outcomes: list[Outcome] = []

    async def main() -> Engine:
        async with Engine(specs, Store(None), EngineSettings()) as engine:
            await engine.run(_requests(20), outcomes.append, total=20)
        return engine

    engine = asyncio.run(main())
    by_url = {s.spec.url: s.stats for s in engine.servers}
    assert engine.stats.hedged == engine.stats.hedge_cancelled == 1
    assert (by_url[fast.url].hedges, by_url[fast.url].cancelled) == (1, 0)
    assert (by_url[slow.url].hedges, by_url[slow.url].cancelled) == (0, 1)
    # the slow server's one request: not ok, not an error, but cancelled (the hedge answered first)
    assert (by_url[slow.url].requests, by_url[slow.url].ok, by_url[slow.url].errors) == (1, 0, 0)
    table = summary_table(engine)
    headers = [c.header for c in table.columns]
    assert headers[:6] == ["server", "requests", "ok", "errors", "hedged", "cancelled"]
    assert list(table.columns[5].cells) == ["0", "1"]


# -- item 3: servers that come and go ---------------------------------------------------------------
def test_a_server_down_at_the_start_joins_when_it_answers(fake_ollama_factory) -> None:
    good = fake_ollama_factory(slots=1, latency=0.05)
    late = fake_ollama_factory(slots=2, latency=0.05)
    late.kill()
    n = 200
    outcomes: list[Outcome] = []

    async def main() -> Engine:
        async with Engine([ServerSpec(good.url), ServerSpec(late.url)], Store(None),
                          EngineSettings(hedge=False, concurrency=1)) as engine:
            assert [s.spec.url for s in engine.servers] == [good.url] and len(engine.unreachable) == 1
            run = asyncio.create_task(engine.run(_requests(n), outcomes.append, total=n))
            while engine.stats.done < 1:
                await asyncio.sleep(0.01)
            await asyncio.to_thread(late.revive)
            await run
        return engine

    engine = asyncio.run(main())
    assert len(outcomes) == n and all(o.ok for o in outcomes)
    late_label = late.url.removeprefix("http://")
    assert sum(o.server == late_label for o in outcomes) > 0
    assert [s.spec.url for s in engine.servers] == [good.url, late.url] and engine.unreachable == []


def test_a_server_answering_only_busy_is_benched_and_takes_few_requests(fake_ollama_factory) -> None:
    good = fake_ollama_factory(slots=2, latency=0.02)
    busy = fake_ollama_factory()
    busy.fail_rate = 1.0
    n = 200
    outcomes: list[Outcome] = []

    async def main() -> Engine:
        async with Engine([ServerSpec(good.url), ServerSpec(busy.url)], Store(None),
                          EngineSettings(hedge=False)) as engine:
            await engine.run(_requests(n), outcomes.append, total=n)
        return engine

    engine = asyncio.run(main())
    assert all(o.ok for o in outcomes) and len(outcomes) == n
    busy_state = next(s for s in engine.servers if s.spec.url == busy.url)
    assert busy_state.stats.benched >= 1 and busy_state.stats.ok == 0
    # 8 busy answers bench it; each re-probe lets its (halved) slots try once more
    assert busy.status_counts[503] < 40, busy.status_counts


def test_max_outage_counts_from_the_first_busy_answer(tmp_path: Path, fake_ollama_factory) -> None:
    busy = fake_ollama_factory()
    busy.fail_rate = 1.0
    write_prompts(tmp_path / "p.jsonl", 20)
    done = corral("run", "p.jsonl", "--server", busy.url, "-m", "llama3.2", "-o", "out.jsonl",
                  "--max-attempts", "1", "--max-outage", "2", "--progress", "none", cwd=tmp_path)
    assert done.returncode == 1, done.stderr[-2000:]
    rows = read_jsonl(tmp_path / "out.jsonl")
    assert len(rows) == 20 and not any(r.get("success", r.get("error") is None) for r in rows)
    assert sum("no live server" in (r.get("error") or "") for r in rows) > 0
    # each row got a few busy answers, not the 30 a row may wait through on a server that answers
    assert busy.status_counts[503] < 40, busy.status_counts


def _config(path: Path, *urls: str) -> None:
    path.write_text("".join(f'[[servers]]\nurl = "{url}"\nmax_concurrency = 1\n\n' for url in urls))


def test_sighup_rereads_the_config_servers_join_and_leave(tmp_path: Path, fake_ollama_factory) -> None:
    first = fake_ollama_factory(slots=1, latency=0.05)
    second = fake_ollama_factory(slots=1, latency=0.05)
    config = tmp_path / "cluster.toml"
    _config(config, first.url)
    n = 300
    write_prompts(tmp_path / "p.jsonl", n)
    run = start_corral(["run", "p.jsonl", "--config", str(config), "-m", "llama3.2", "-o", "out.jsonl",
                        "--no-hedge", "--progress", "none"], tmp_path)
    db = tmp_path / "out.jsonl.corral.db"
    try:
        wait_for(lambda: journal_rows(db) >= 5 or run.poll() is not None, 60, "a few rows")
        config.write_text("[[servers]\nurl = ")  # half-edited: logged, ignored, the run goes on
        run.send_signal(signal.SIGHUP)
        before = journal_rows(db)
        wait_for(lambda: journal_rows(db) >= before + 5 or run.poll() is not None, 60, "more rows")
        _config(config, second.url)
        run.send_signal(signal.SIGHUP)
        wait_for(lambda: second.completed >= 1 or run.poll() is not None, 60, "the added server's answers")
        sent_to_first = len(first.requests)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    assert run.returncode == 0, err[-3000:]
    assert "not reloaded, the servers stay as they were" in err, err[-3000:]
    first_label, second_label = (s.url.removeprefix("http://") for s in (first, second))
    assert f"cluster.toml reloaded: added {second_label}; removed {first_label}" in err, err[-3000:]
    assert len(first.requests) == sent_to_first  # removed: no row sent there after the new one answered
    out = read_jsonl(tmp_path / "out.jsonl")
    assert len(out) == n and all(r["error"] is None for r in out)
    assert {r["server"] for r in out} == {first_label, second_label}
