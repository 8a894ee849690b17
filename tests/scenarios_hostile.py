"""Hostile servers and absurd settings (issue #17, part A): the engine and the wire.

Each case runs the real `corral` command (or the Python front, where the case is a Python one)
against fake servers on 127.0.0.1 that answer with fields of the wrong type, list their models in a
malformed way, stay busy for a day, or never answer; or with settings no one means (a billion slots,
a timeout of nan). A case returns the line that shows how corral handled it and raises
AssertionError when it was not handled: a traceback, a hang (the command still running after
``LIMIT`` seconds), a lost row, or more than one line for a refused setting.

``tests/test_hostile.py`` runs every case; ``benchmarks/faults.py`` runs ``hostile`` and prints the
counts the issue asks for: cases tried, handled with one clear line, tracebacks, hangs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import exactly_once, one_line_error, read_jsonl, run_corral, write_prompts
from tests.fakes import FakeServer

Figures = dict[str, Any]
LIMIT = 90.0  # seconds: a case still running then is a hang


def _run(work: Path, args: list[str]) -> tuple[int, str]:
    """`corral ARGS` in ``work``: (exit code, stderr), with no traceback."""
    work.mkdir(parents=True, exist_ok=True)
    code, _, err, _ = run_corral(args, work, timeout=LIMIT)
    assert "Traceback" not in err, err[-3000:]
    return code, err


def _run_prompts(work: Path, servers: list[FakeServer], rows: int, *extra: str) -> tuple[int, str, list[Any]]:
    """`corral run` of ``rows`` prompts on ``servers``: (exit code, stderr, output rows)."""
    work.mkdir(parents=True, exist_ok=True)
    write_prompts(work / "p.jsonl", rows)
    urls = [arg for server in servers for arg in ("--server", server.url)]
    code, err = _run(work, ["run", "p.jsonl", "-m", "llama3.2", "-o", "out.jsonl", *urls,
                            "--progress", "none", *extra])
    out = read_jsonl(work / "out.jsonl") if (work / "out.jsonl").exists() else []
    return code, err, out


def _refused(work: Path, args: list[str], server: FakeServer, words: str) -> str:
    """A setting refused: exit 2, one line naming it, no inference request sent."""
    before = len(server.requests)
    code, err = _run(work, args)
    line = one_line_error(err)
    assert code == 2 and words in line, err
    assert len(server.requests) == before, "a refused run sent requests"
    return line


# ---- 1. answers whose fields have the wrong type: every row ends -----------------------------------

def _typed_answer(api: str, fields: dict[str, Any]) -> Callable[[Path, int], str]:
    def case(work: Path, rows: int) -> str:
        with FakeServer(api=api, slots=4) as server:  # type: ignore[arg-type]
            server.answer_fields = fields
            code, err, out = _run_prompts(work, [server], rows, "--api", api)
        lost, duplicated = exactly_once(out, rows)
        assert code == 0 and not lost and not duplicated, err[-3000:]
        assert all(r["success"] for r in out), out[0]
        return f"{rows}/{rows} rows ok, the bad figures left out"
    return case


def _no_text(work: Path, rows: int) -> str:
    with FakeServer(slots=4) as server:
        server.answer_fields = {"message": "hi"}  # a string where Ollama sends {"role", "content"}
        code, err, out = _run_prompts(work, [server], rows, "--max-attempts", "2")
    assert code == 1 and len(out) == rows, err[-3000:]
    assert all(not r["success"] and "answer has no text" in r["error"] for r in out), out[0]
    return f"{rows}/{rows} rows failed: {out[0]['error']}"


def _fleet_one_hostile(work: Path, rows: int) -> str:
    rows = max(rows, 40)
    with FakeServer(slots=4, latency=0.01) as good, FakeServer(slots=4, latency=0.01) as bad:
        bad.answer_fields = {"eval_count": "many", "prompt_eval_count": [1], "eval_duration": "fast"}
        code, err, out = _run_prompts(work, [good, bad], rows)
    lost, duplicated = exactly_once(out, rows)
    assert code == 0 and not lost and not duplicated, err[-3000:]
    return f"fleet of 2, one hostile: {rows}/{rows} rows ok, the run ended"


# ---- 6. a malformed model listing: that server is skipped ---------------------------------------

def _bad_tags(body: Any, alone: bool = False) -> Callable[[Path, int], str]:
    def case(work: Path, rows: int) -> str:
        with FakeServer(slots=4) as good, FakeServer(slots=4) as bad:
            bad.tags_body = body
            if alone:
                work.mkdir(parents=True, exist_ok=True)
                write_prompts(work / "p.jsonl", rows)
                return _refused(work, ["run", "p.jsonl", "-m", "llama3.2", "-o", "out.jsonl", "--server",
                                       bad.url, "--progress", "none"], bad, "malformed /api/tags")
            code, err, out = _run_prompts(work, [bad, good], rows)
        assert code == 0 and len(out) == rows and all(r["success"] for r in out), err[-3000:]
        skipped = [line for line in err.splitlines() if "malformed /api/tags" in line]
        assert skipped, err
        return skipped[0].strip()
    return case


# ---- 2. absurd settings: refused with one line, nothing sent --------------------------------------

def _absurd_flag(*flag: str, words: str) -> Callable[[Path, int], str]:
    def case(work: Path, rows: int) -> str:
        with FakeServer(slots=4) as server:
            work.mkdir(parents=True, exist_ok=True)
            write_prompts(work / "p.jsonl", rows)
            line = _refused(work, ["run", "p.jsonl", "-m", "llama3.2", "-o", "out.jsonl", "--server",
                                   server.url, "--progress", "none", *flag], server, words)
        assert not (work / "out.jsonl").exists(), "a refused run wrote its output"
        return line
    return case


def _absurd_config(toml: str, words: str) -> Callable[[Path, int], str]:
    def case(work: Path, rows: int) -> str:
        with FakeServer(slots=4) as server:
            work.mkdir(parents=True, exist_ok=True)
            write_prompts(work / "p.jsonl", rows)
            (work / "c.toml").write_text(f'{toml}\n[[servers]]\nurl = "{server.url}"\n', encoding="utf-8")
            return _refused(work, ["run", "p.jsonl", "-m", "llama3.2", "-o", "out.jsonl", "--config",
                                   "c.toml", "--progress", "none"], server, words)
    return case


def _python_timeout(work: Path, rows: int) -> str:
    from corral import batch_generate
    from corral.errors import UsageError

    with FakeServer(slots=4) as server:
        try:
            batch_generate(["a"], model="llama3.2", servers=[server.url], timeout=float("nan"))
        except UsageError as exc:
            assert not server.requests
            return f"batch_generate(timeout=nan): UsageError: {exc}"
    raise AssertionError("batch_generate accepted timeout=nan")


def _busy_for_a_day(work: Path, rows: int) -> str:
    """429 with Retry-After: 100000 on every answer: each row fails once its busy time is spent."""
    with FakeServer(slots=4) as server:
        server.fail_rate, server.fail_status, server.retry_after = 1.0, 429, 100000
        code, err, out = _run_prompts(work, [server], rows, "--max-busy-seconds", "1")
        sent = len(server.requests)
    assert code == 1 and len(out) == rows, err[-3000:]
    assert all(not r["success"] and "max_busy_seconds 1" in r["error"] for r in out), out[0]
    assert sent <= 3 * rows, f"{sent} requests for {rows} rows"
    return f"{rows}/{rows} rows failed after {sent / rows:.1f} requests each: {out[0]['error']}"


def _never_answers(work: Path, rows: int) -> str:
    """Probes answer, generation never does: each row gets two attempts that time out, then fails."""
    with FakeServer(slots=4) as server:
        server.hang = True
        code, err, out = _run_prompts(work, [server], rows, "--timeout", "0.5")
        sent = len(server.requests)
    assert code == 1 and len(out) == rows, err[-3000:]
    assert all(not r["success"] and "2 attempts timed out" in r["error"] for r in out), out[0]
    assert sent == 2 * rows, f"{sent} requests for {rows} rows"
    return f"{rows}/{rows} rows failed after 2 attempts each: {out[0]['error']}"


# ---- 10. the rest: port 0, a lone surrogate, serve stop -------------------------------------------

def _port_zero(work: Path, rows: int) -> str:
    with FakeServer(slots=4) as server:
        work.mkdir(parents=True, exist_ok=True)
        write_prompts(work / "p.jsonl", rows)
        return _refused(work, ["run", "p.jsonl", "-m", "llama3.2", "-o", "out.jsonl", "--server",
                               "http://127.0.0.1:0", "--progress", "none"], server, "port 0")


def _lone_surrogate(work: Path, rows: int) -> str:
    from corral import batch_generate

    prompts = [f"prompt {i}" for i in range(rows)]
    prompts[1] = "broken \ud800 text"
    with FakeServer(slots=4) as server:
        results = batch_generate(prompts, model="llama3.2", servers=[server.url])
        sent = len(server.requests)
    assert len(results) == rows, results
    bad = results[1]
    assert not bad["success"] and "cannot be sent" in bad["error"], bad
    assert all(r["success"] for i, r in enumerate(results) if i != 1)
    assert sent == rows - 1
    return f"{rows} rows returned, the broken one failed: {bad['error']}"


def _stop_survivor(work: Path, rows: int) -> str:
    """A fleet member that outlives its SIGKILL (stuck in the kernel, or another user's): `serve stop`
    must not call it killed, and must keep it in the state file. Signals are withheld from it here,
    as the kernel would have them pending."""
    from corral import serve

    work.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    try:
        member = serve.Member(name="m0", engine="ollama", gpu=None, host="127.0.0.1", port=1,
                              log=str(work / "m0.log"), pid=child.pid,
                              start_time=serve.process_start_time(child.pid))
        fleet = serve.Fleet([member], work, "ollama")
        fleet.save()
        withheld, kill_wait = serve._signal, serve.KILL_WAIT
        serve._signal, serve.KILL_WAIT = (lambda m, sig: None), 0.2
        try:
            outcome = serve.stop(work, timeout=0.2)
        finally:
            serve._signal, serve.KILL_WAIT = withheld, kill_wait
        (_, what), = outcome
        assert "still running" in what and "killed" not in what, what
        kept = serve.load_members(work)
        assert kept and kept[0].pid == child.pid, kept
        return f"serve stop: {what}"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()


CASES: list[tuple[str, Callable[[Path, int], str]]] = [
    ("eval_count \"many\", prompt_eval_count [1], eval_duration \"fast\"",
     _typed_answer("ollama", {"eval_count": "many", "prompt_eval_count": [1], "eval_duration": "fast"})),
    ("OpenAI usage.completion_tokens \"x\"", _typed_answer("openai", {"usage.completion_tokens": "x"})),
    ("OpenAI usage [1], timings \"x\"", _typed_answer("openai", {"usage": [1], "timings": "x"})),
    ("counts of 2**64, -1, 1e300", _typed_answer(
        "ollama", {"eval_count": 2 ** 64 - 1, "prompt_eval_count": -1, "total_duration": 1e300})),
    ("message is a string", _no_text),
    ("fleet: one of two servers hostile, 40 rows", _fleet_one_hostile),
    ("/api/tags models \"x\"", _bad_tags({"models": "x"})),
    ("/api/tags models [1]", _bad_tags({"models": [1]})),
    ("/api/tags name 5", _bad_tags({"models": [{"name": 5}]})),
    ("/api/tags digest an object", _bad_tags({"models": [{"name": "llama3.2:latest", "digest": {"a": 1}}]})),
    ("/api/tags malformed, the only server", _bad_tags({"models": "x"}, alone=True)),
    ("-j 1000000000", _absurd_flag("-j", "1000000000", words="at most 4096")),
    ("config max_concurrency = 1000000000000",
     _absurd_config("max_concurrency = 1000000000000", "max_concurrency must be at most 4096")),
    ("--timeout nan", _absurd_flag("--timeout", "nan", words="--timeout must be a finite number")),
    ("--timeout -1", _absurd_flag("--timeout", "-1", words="--timeout must be a finite number")),
    ("--timeout 0", _absurd_flag("--timeout", "0", words="--timeout must be a finite number")),
    ("config timeout = nan", _absurd_config("timeout = nan", "timeout must be a finite number")),
    ("batch_generate(timeout=nan)", _python_timeout),
    ("429 with Retry-After: 100000 on every answer", _busy_for_a_day),
    ("generation never answers (probes do)", _never_answers),
    ("port 0 in a URL", _port_zero),
    ("batch_generate with a lone surrogate", _lone_surrogate),
    ("serve stop: a process that outlives SIGKILL", _stop_survivor),
]


def hostile(work: Path, rows: int = 20) -> Figures:
    """Every case of CASES; the counts the issue's Figures section asks for."""
    handled, failures = [], []
    tracebacks = hangs = 0
    for i, (name, case) in enumerate(CASES):
        try:
            line = case(work / f"case{i}", rows)
        except AssertionError as exc:
            text = str(exc)
            tracebacks += "Traceback" in text
            hangs += "still running after" in text
            failures.append(f"{name}: {text[:300]}")
            continue
        handled.append((name, line))
    figures: Figures = {"cases": len(CASES), "handled": len(handled), "tracebacks": tracebacks,
                        "hangs": hangs, "failures": failures, "lines": handled}
    figures["setup"] = (f"{len(CASES)} hostile answers, malformed listings, absurd settings, a day-long "
                        f"Retry-After, a silent generation, port 0, a lone surrogate, a process outliving SIGKILL")
    figures["result"] = (f"{len(CASES)} cases, {len(handled)} handled with one clear line; tracebacks "
                         f"{tracebacks}, hangs {hangs}")
    assert not failures, failures
    return figures


if __name__ == "__main__":  # print every case's line: python -m tests.scenarios_hostile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        result = hostile(Path(tmp))
        for name, line in result["lines"]:
            print(f"{name}: {line}")
        print(result["result"], f"({time.monotonic() - started:.0f}s)")
