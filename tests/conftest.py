"""Shared test helpers, defined once: running the real `corral` command, writing prompt files and
reading JSONL outputs and journals, waiting on conditions, watching processes, and fake servers in a
process of their own.

Plain functions rather than fixtures, so that ``tests/scenarios.py`` (and through it
``benchmarks/faults.py``) and the test modules call the same code. The fake-server fixtures come
from ``tests/fakes/fixtures.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

pytest_plugins = ["tests.fakes.fixtures"]

ROOT = Path(__file__).resolve().parent.parent


# ---- the corral command -------------------------------------------------------------------------

def corral_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a `corral` child: progress logged every second, and no
    OLLAMA_HOST leaking in from the developer's shell (unless ``extra`` sets one)."""
    env = {**os.environ, "CORRAL_LOG_INTERVAL": "1"}
    env.pop("OLLAMA_HOST", None)
    return {**env, **(extra or {})}


def corral(*args: str, cwd: Path | None = None, timeout: float = 120,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `python -m corral ARGS` as a user would, capturing output (never a terminal)."""
    return subprocess.run([sys.executable, "-m", "corral", *args], cwd=cwd, env=corral_env(env),
                          capture_output=True, text=True, timeout=timeout)


def start_corral(args: list[str], cwd: Path, *, env: dict[str, str] | None = None,
                 stdin: Any = subprocess.DEVNULL, **popen: Any) -> subprocess.Popen[str]:
    """`python -m corral ARGS` started in the background, output captured (never a terminal)."""
    return subprocess.Popen([sys.executable, "-m", "corral", *args], cwd=cwd, env=corral_env(env),
                            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def run_corral(args: list[str], cwd: Path, *, timeout: float = 180,
               env: dict[str, str] | None = None, **popen: Any) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds). The seconds are for benchmark tables, never asserted."""
    started = time.monotonic()
    proc = start_corral(args, cwd, env=env, **popen)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"corral {' '.join(args)} still running after {timeout}s:\n{err[-3000:]}") from None
    return proc.returncode, out, err, time.monotonic() - started


def one_line_error(err: str) -> str:
    """The single error line corral printed, checked to be the only output and no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("corral: error: "), lines[0]
    return lines[0]


# ---- files: prompts in, rows and journals out ---------------------------------------------------

def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """One object per line. Lines split on bytes: U+2028 inside an answer is not a line break."""
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def write_prompts(path: Path, n: int, *, prefix: str = "prompt", long: dict[int, str] | None = None) -> Path:
    """``n`` rows with ids ``row-i`` and prompts ``<prefix> i`` (or the text in ``long``)."""
    with open(path, "wb") as handle:
        for i in range(n):
            text = (long or {}).get(i, f"{prefix} {i}")
            handle.write(orjson.dumps({"id": f"row-{i}", "prompt": text}) + b"\n")
    return path


def exactly_once(rows: list[dict[str, Any]], n: int) -> tuple[int, int]:
    """(lost, duplicated) rows of an output against ids row-0..row-{n-1}; also checks the order."""
    ids = [r["id"] if "custom_id" not in r else r["custom_id"] for r in rows]
    expected = [f"row-{i}" for i in range(n)]
    lost = len(set(expected) - set(ids))
    duplicated = len(ids) - len(set(ids))
    if not lost and not duplicated:
        assert ids == expected, "rows out of input order"
    return lost, duplicated


def journal_rows(db: Path, status: str | None = "ok") -> int:
    """Rows committed to a journal (read after the writer is gone, or beside it: WAL readers)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(db, timeout=10)
    try:
        if status is None:
            return con.execute("SELECT count(*) FROM results").fetchone()[0]
        return con.execute("SELECT count(*) FROM results WHERE status = ?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:  # no table yet
        return 0
    finally:
        con.close()


def integrity(db: Path) -> str:
    con = sqlite3.connect(db, timeout=10)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


# ---- waiting and processes ----------------------------------------------------------------------

def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.01) -> None:
    """Wait on a condition, not a clock: ``timeout`` is only the safety net of a hung test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (not Linux)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def wait_gone(pid: int, timeout: float = 10) -> bool:
    """True once ``pid`` is gone (or a zombie); False if it still runs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (Linux /proc)."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


class ServerProcess:
    """A fake server in its own process (``python -m tests.fakes``), so it can be SIGKILLed
    like a real one and started again on the same port. ``record`` lists what it received."""

    def __init__(self, work: Path, name: str, *args: str, port: int = 0) -> None:
        self.record = work / f"{name}.requests"
        self.args = args
        self.port = port
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        pythonpath = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.fakes", "--port", str(self.port), "--record",
             str(self.record), *self.args],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": pythonpath}, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), f"fake server did not start: {line!r}"
        self.url = line.split()[1]
        self.port = int(self.url.rsplit(":", 1)[1])

    @property
    def label(self) -> str:
        return self.url.removeprefix("http://")

    def received(self) -> list[str]:
        """The prompt of every inference request so far (the lines of the record file)."""
        if not self.record.exists():
            return []
        return [line.split("\t", 1)[1] for line in self.record.read_text(encoding="utf-8").splitlines()
                if "\t" in line]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


# ---- the gateway --------------------------------------------------------------------------------

def write_batch(path: Path, n: int, *, model: str = "llama3.2", url: str = "/v1/chat/completions",
                prefix: str = "question") -> Path:
    """``n`` OpenAI Batch lines with custom_ids ``row-i`` (chat, completions or embeddings)."""
    with open(path, "wb") as handle:
        for i in range(n):
            text = f"{prefix} {i}"
            body: dict[str, Any] = (
                {"model": model, "input": text} if url == "/v1/embeddings" else
                {"model": model, "prompt": text, "max_tokens": 8} if url == "/v1/completions" else
                {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 8})
            handle.write(orjson.dumps({"custom_id": f"row-{i}", "method": "POST", "url": url,
                                       "body": body}) + b"\n")
    return path


class GatewayProcess:
    """`corral gateway --port 0 ARGS` in the background; ``url`` once it listens. Its stderr is
    drained by a thread (``log``), so a chatty gateway never blocks on a full pipe."""

    def __init__(self, cwd: Path, *args: str, env: dict[str, str] | None = None,
                 timeout: float = 60) -> None:
        import re
        import threading

        self.proc = start_corral(["gateway", "--port", "0", *args], cwd, env=env)
        self.log: list[str] = []
        ready = threading.Event()
        found: list[str] = []

        def drain() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line)
                match = re.search(r"gateway on (http://\S+)/v1", line)
                if match and not found:
                    found.append(match.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        ready.wait(timeout)
        if not found:
            self.stop()
            raise AssertionError("the gateway did not start:\n" + "".join(self.log))
        self.url = found[0]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def client(self, api_key: str = "unused") -> Any:
        from openai import OpenAI

        return OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
