"""Resuming from the journal (issue 21): what a re-run reads, what the journal keeps, old journals.

`tests/data/journal_v2/` holds a job run by corral before the journal's schema 3 (commit b0064e8):
its prompts, its output and its journal, with one failed row (the fake answered its first request
with a 400, and the job allowed one attempt; made by tests/data/journal_v2/make.py). The new code
must resume it without sending anything, and report on it.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path

import orjson
import pandas as pd

from corral.engine import JobStats
from corral.progress import skipping
from corral.report.data import load
from corral.settings import resolve
from corral.store import SCHEMA_VERSION
from corral.tables.analysis import build_runner
from corral.tables.fill import FillPlan
from corral.tables.job import Where, run_table_file
from corral.tables.runner import MAX_PENDING_CHUNKS, Answer, RowResult, TableRunner
from tests.conftest import corral, read_jsonl, write_jsonl, write_prompts
from tests.fakes import FakeServer

DATA = Path(__file__).parent / "data" / "journal_v2"


def _ignoring_timing(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("latency", "cached", "server")} for row in rows]


def test_a_schema_2_journal_resumes_without_sending_and_reports(tmp_path: Path) -> None:
    for name in ("prompts.jsonl", "out.jsonl", "out.jsonl.corral.db"):
        shutil.copy(DATA / name, tmp_path / name)
    before = read_jsonl(tmp_path / "out.jsonl")
    with FakeServer(slots=4) as server:
        done = corral("run", "prompts.jsonl", "-o", "out.jsonl", "-s", server.url, "-m", "llama3.2",
                      "--progress", "none", cwd=tmp_path)
        assert done.returncode == 1, done.stderr  # the failed row is still failed
        assert server.requests == []
    after = read_jsonl(tmp_path / "out.jsonl")
    assert _ignoring_timing(after) == _ignoring_timing(before)
    assert all(row["cached"] for row in after)
    db = sqlite3.connect(tmp_path / "out.jsonl.corral.db")
    assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    db.close()
    report = load(tmp_path / "out.jsonl.corral.db")
    assert report.ok == len(before) - 1 and report.failed == 1
    assert report.errors[0].examples[0]["prompt"] == "a prompt that failed"


def test_new_rows_beside_old_ones_and_failed_rows_keep_what_was_asked(tmp_path: Path) -> None:
    for name in ("prompts.jsonl", "out.jsonl.corral.db"):
        shutil.copy(DATA / name, tmp_path / name)
    with open(tmp_path / "prompts.jsonl", "ab") as handle:
        handle.write(orjson.dumps({"id": "new", "prompt": "a new prompt"}) + b"\n")
    with FakeServer(slots=4) as server:
        done = corral("run", "prompts.jsonl", "-o", "out.jsonl", "-s", server.url, "-m", "llama3.2",
                      "--retry-failed", "--progress", "none", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert sorted(server.count_by_prompt()) == ["a new prompt", "a prompt that failed"]
    rows = {row["id"]: row for row in read_jsonl(tmp_path / "out.jsonl")}
    assert rows["new"]["response"] == "echo: a new prompt" and not rows["new"]["cached"]
    assert rows["row-0"]["response"] == "echo: prompt 0" and rows["row-0"]["cached"]
    db = sqlite3.connect(tmp_path / "out.jsonl.corral.db")
    kinds = dict(db.execute("SELECT status, typeof(raw) FROM results WHERE key IN "
                            "(SELECT key FROM results ORDER BY rowid DESC LIMIT 1)"))
    assert kinds == {"ok": "blob"}  # the new row is packed; the old ones keep their text
    assert db.execute("SELECT COUNT(*) FROM results WHERE typeof(raw) = 'text'").fetchone()[0] > 0
    db.close()


def test_journal_is_no_larger_than_the_output(tmp_path: Path, fake_ollama) -> None:
    """A journal row costs about 300 bytes plus the answer (the key twice, with its index; the
    counters; the raw answer packed to ~40 bytes); an output row about 260 plus the prompt and the
    answer. So with prompts of the benchmark's length (~90 characters) the journal is the smaller."""
    write_prompts(tmp_path / "p.jsonl", 3000,
                  prefix="Question: what is the capital of this country, and why did it become the capital? No.")
    done = corral("run", "p.jsonl", "-o", "out.jsonl", "-s", fake_ollama.url, "-m", "llama3.2",
                  "--progress", "none", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    journal = sum(p.stat().st_size for p in tmp_path.glob("out.jsonl.corral.db*"))
    assert journal <= (tmp_path / "out.jsonl").stat().st_size


def test_batch_output_rebuilt_from_the_journal_is_the_same(tmp_path: Path, fake_openai) -> None:
    """vLLM batch lines carry the server's whole answer: the journal keeps it (packed) and a re-run
    writes the same lines."""
    write_jsonl(tmp_path / "batch.jsonl", [
        {"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": "llama3.2", "messages": [{"role": "user", "content": f"question {i}"}]}}
        for i in range(20)])
    args = ("run", "batch.jsonl", "-o", "out.jsonl", "-s", fake_openai.url, "--api", "openai",
            "--progress", "none")
    assert corral(*args, cwd=tmp_path).returncode == 0
    first = (tmp_path / "out.jsonl").read_bytes()
    sent = len(fake_openai.requests)
    assert corral(*args, cwd=tmp_path).returncode == 0
    assert len(fake_openai.requests) == sent
    assert (tmp_path / "out.jsonl").read_bytes() == first
    assert orjson.loads(first.splitlines()[0])["response"]["body"]["choices"][0]["message"]["content"]


def test_progress_line_says_it_is_skipping() -> None:
    stats = JobStats(total=10)
    assert skipping(stats) is None
    stats.cached = stats.done = 4
    assert skipping(stats) == "skipping rows already in the journal: 4 so far"
    stats.sent = 1
    assert skipping(stats) is None


def test_a_sparse_table_job_reads_no_further_than_two_unanswered_chunks(tmp_path: Path) -> None:
    """A fill where one row in 10 is asked, in chunks of 10 rows: each chunk is read only once the
    chunk two before it has been written (counted by what was emitted when each chunk is read)."""
    rows = 120
    frame = pd.DataFrame({"title_en": [f"event {i}" for i in range(rows)],
                          "City": ["" if i % 10 == 3 else "Bergen" for i in range(rows)]})
    emitted: list[int] = []
    seen_at_read: list[int] = []

    def chunks():
        for start in range(0, rows, 10):
            seen_at_read.append(len(emitted))
            yield frame.iloc[start:start + 10]

    def build(columns: list[str], emit) -> TableRunner:
        def counted(chunk: pd.DataFrame) -> None:
            emitted.append(len(chunk))
            emit(chunk)
        plan = FillPlan(columns, "title_en", ("City",), None, None)
        return TableRunner(models=("llama3.2",), fanout=False, system=None, options={}, plan=plan,
                           finish=lambda chunk, results: chunk, emit=counted)

    with FakeServer(slots=2, latency=0.02, responder=lambda body: '{"City": "Oslo"}') as server:
        job = resolve(servers=[server.url])
        report = asyncio.run(run_table_file(
            tmp_path / "in.csv", tmp_path / "out.csv", build=build, describe=None, where=Where(job=job),
            chunks=chunks(), rows=rows, progress="none"))
        assert len(server.requests) == rows // 10
    assert report.written == rows and len(emitted) == rows // 10
    # TableStream reads the first chunk itself; chunk k is read once chunks 0..k-2 were written
    assert all(seen >= k - (MAX_PENDING_CHUNKS - 1) for k, seen in enumerate(seen_at_read)), seen_at_read


def test_a_rerun_takes_the_scan_from_the_journal_and_a_changed_input_is_scanned_again(
        tmp_path: Path, fake_ollama) -> None:
    lines = [orjson.dumps({"id": f"r{i}", "prompt": f"prompt {i}"}).decode() for i in range(5)]
    (tmp_path / "p.jsonl").write_text("\n".join([*lines[:2], "{not json", *lines[2:]]) + "\n")
    args = ("run", "p.jsonl", "-o", "out.jsonl", "-s", fake_ollama.url, "-m", "llama3.2", "--skip-invalid",
            "--progress", "none")
    first = corral(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    db = sqlite3.connect(tmp_path / "out.jsonl.corral.db")
    assert db.execute("SELECT COUNT(*) FROM scans").fetchone() == (1,)
    db.close()
    again = corral(*args, cwd=tmp_path)  # the kept report still skips line 3, and says so
    assert again.returncode == 0, again.stderr
    assert "p.jsonl:3:" in again.stderr and len(fake_ollama.requests) == 5
    assert [row["id"] for row in read_jsonl(tmp_path / "out.jsonl")] == [f"r{i}" for i in range(5)]
    with open(tmp_path / "p.jsonl", "a") as handle:
        handle.write("[1, 2]\n")
    changed = corral(*args, cwd=tmp_path)  # other bytes: scanned again, the new bad line found
    assert changed.returncode == 0, changed.stderr
    assert "p.jsonl:3:" in changed.stderr and "p.jsonl:7:" in changed.stderr
    assert len(fake_ollama.requests) == 5


def test_duplicate_ids_are_refused_past_the_ids_kept_in_memory(tmp_path: Path, monkeypatch) -> None:
    """The scan's ids move to a temporary file past a threshold (flat memory on millions of rows);
    a duplicate is still refused, at its line."""
    import pytest

    from corral.errors import InputError
    from corral.sources import Defaults, PromptFile, jsonl

    monkeypatch.setattr(jsonl._SeenIds, "IN_MEMORY", 10)
    rows = [{"id": f"r{i}", "prompt": f"p {i}"} for i in range(40)] + [{"id": "r3", "prompt": "again"}]
    write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(InputError, match="duplicate id 'r3'") as caught:
        PromptFile(tmp_path / "p.jsonl", Defaults(model="llama3.2")).scan()
    assert ":41:" in str(caught.value)
    write_jsonl(tmp_path / "ok.jsonl", rows[:40])
    assert PromptFile(tmp_path / "ok.jsonl", Defaults(model="llama3.2")).scan().rows == 40


def test_ids_kept_on_disk_are_closed_cleanly_from_another_thread(monkeypatch) -> None:
    """A notebook's job scans on its own thread; the ids' temporary file is closed wherever the
    scan is collected, without an "SQLite objects created in a thread" error at exit."""
    import gc
    import sys
    import threading

    from corral.sources import jsonl

    monkeypatch.setattr(jsonl._SeenIds, "IN_MEMORY", 10)
    made: list[jsonl._SeenIds] = []

    def scan() -> None:
        seen = jsonl._SeenIds()
        for i in range(40):
            assert seen.add(f"r{i}")
        assert not seen.add("r3")
        made.append(seen)

    worker = threading.Thread(target=scan)
    worker.start()
    worker.join()
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    made.clear()
    gc.collect()
    assert unraisable == []


def test_a_kept_scan_keeps_implicit_ids_clear_of_explicit_ones(tmp_path: Path) -> None:
    """Line 1 has no id and line 2's explicit id is "1": line 1 is "~1", also on a re-run that takes
    the scan kept in the journal instead of scanning again."""
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": "first"}, {"prompt": "second", "id": "1"}])
    with FakeServer(slots=2) as server:
        for _ in range(2):
            done = corral("run", "p.jsonl", "-o", "out.jsonl", "-s", server.url, "-m", "llama3.2",
                          "--progress", "none", cwd=tmp_path)
            assert done.returncode == 0, done.stderr
            assert [row["id"] for row in read_jsonl(tmp_path / "out.jsonl")] == ["~1", "1"]
        assert len(server.requests) == 2


def test_a_table_job_builds_requests_as_the_engine_reads_them(tmp_path: Path) -> None:
    """An analysis asks about every row: a chunk's rows are planned only as the engine takes them
    (at most its read-ahead window, 2,048 rows, ahead of the answers passed on), not a whole
    chunk of requests at once, and an answered row keeps only its Answer until the chunk is written."""
    rows, chunk = 6000, 3000
    pd.DataFrame({"title_en": [f"event {i}" for i in range(rows)]}).to_csv(tmp_path / "in.csv", index=False)
    ahead: list[int] = []
    kept: list[type] = []

    with FakeServer(slots=4) as server:
        def build(columns: list[str], emit) -> TableRunner:
            runner = build_runner(columns, emit, text_column="title_en", models=("llama3.2",), fanout=False,
                                  prompt_template=None, json_keys=None, json_schema=None, system=None,
                                  options={})
            plan, finish, write = runner.plan, runner.finish, runner.write
            answered = [0]

            class Counted:
                reads = plan.reads

                def __call__(self, row):
                    ahead.append(runner.rows_read - answered[0])
                    return plan(row)

            def counted(outcome) -> None:
                answered[0] += 1
                write(outcome)

            def finished(frame: pd.DataFrame, results: list[RowResult]) -> pd.DataFrame:
                kept.extend(type(r.answers) for r in results)
                return finish(frame, results)

            runner.plan, runner.finish, runner.write = Counted(), finished, counted  # type: ignore[method-assign]
            return runner

        job = resolve(servers=[server.url])
        report = asyncio.run(run_table_file(
            tmp_path / "in.csv", tmp_path / "out.csv", build=build, describe=None, where=Where(job=job),
            chunk_size=chunk, progress="none"))
        assert len(server.requests) == rows
    assert report.written == rows and len(ahead) == rows
    # the window, the row being planned and the one handed out a step behind; a whole chunk
    # planned at once was 3,000 rows ahead
    assert max(ahead) <= 2048 + 2, max(ahead)
    assert set(kept) == {Answer}
    assert pd.read_csv(tmp_path / "out.csv")["response"].notna().all()
